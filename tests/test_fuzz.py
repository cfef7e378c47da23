"""Property-based tests: hostile exchange answers and hostile configuration files.

- The exchange client, driven against loopback servers whose answer each example
  sets, returns a valid result or raises an :class:`ExchangeError` subclass:
  never anything else, whatever the status, headers, body or raw HTTP bytes.
- The configuration loader, fed generated TOML documents and arbitrary text,
  returns a :class:`Config` or raises :class:`ConfigError` with a dotted key and
  a one-line message; ``check-config`` turns that into exit 2 and one stderr line.

(The PnL parser is fuzzed in ``tests/test_pnl.py``.)  One event loop and one
pair of servers serve every example; each test runs its async part through
``loop.run_until_complete``.  ``pytest -s`` prints how many cases ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as time_of_day
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from structlog.typing import FilteringBoundLogger
from yarl import URL

from killswitch.cli import main as cli_main
from killswitch.config.load import load_config, parse_config
from killswitch.config.model import ExchangeConfig, as_dict
from killswitch.config.reader import ConfigError
from killswitch.exchange.client import ENDPOINTS as EXCHANGE_ENDPOINTS
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.credentials import Credentials, Secret
from killswitch.exchange.errors import ExchangeError
from killswitch.exchange.orders import OrderPage
from killswitch.exchange.ratelimit import SlidingWindowLimiter
from killswitch.exchange.signing import make_signer
from killswitch.kill.confirm import VENUE_STATUSES

CASES: Counter[str] = Counter()  # examples run, by property
OUTCOMES: Counter[str] = Counter()  # exchange calls, by endpoint and outcome
ORDER_ID = "01936be4-2571-7a3f-97fa-a29a2b85d717"
SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
ENDPOINTS = ("cancel_all", "order_status", "open_orders")


@pytest.fixture(scope="module", autouse=True)
def _report_cases() -> Iterator[None]:
    """Print the number of generated cases per property (shown with ``-s``)."""
    yield
    detail = ", ".join(f"{name} {n}" for name, n in sorted(CASES.items()))
    print(f"\nfuzz cases run: {sum(CASES.values())} ({detail})")
    print("exchange outcomes: " + ", ".join(f"{k} {n}" for k, n in sorted(OUTCOMES.items())))


# =========================================================================== exchange


class _JumpClock:
    """Real time, except that a short sleep jumps the clock instead of waiting.

    A fuzzed ``Retry-After`` (honoured up to 300 s) then never holds the suite up,
    while the client's clock-sync sleep (``clock_sync_interval``, an hour here) really
    sleeps rather than spinning.
    """

    REAL_SLEEP_FROM = 1000.0

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        if seconds >= self.REAL_SLEEP_FROM:
            await asyncio.sleep(seconds)
            return
        self.offset += max(0.0, seconds)
        await asyncio.sleep(0)


def _ignore(*args: object, **kwargs: object) -> None:
    return None


class _Quiet:
    """A logger that drops every event (thousands of examples would flood the output)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _ignore


@dataclass
class _Reply:
    """What the servers answer next: status, headers and body, or raw HTTP bytes."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""


class _Rig:
    """One event loop, an aiohttp server, a raw TCP server and a client for each."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.reply = _Reply()
        self.clock = _JumpClock()
        self.loop.run_until_complete(self._start())

    def _client(self, base_url: str) -> ExchangeClient:
        config = ExchangeConfig(base_url=base_url, request_timeout=3.0, clock_sync_interval=3600.0)
        credentials = Credentials(api_key=Secret("fuzz-api-key"), api_secret=Secret(SECRET))

        def limiter(name: str) -> SlidingWindowLimiter:
            return SlidingWindowLimiter(name, 1_000_000, 1.0, self.clock, margin=0.0)

        return ExchangeClient(
            config,
            make_signer(config, credentials),
            limiters={name: limiter(name) for name in EXCHANGE_ENDPOINTS},
            clock=self.clock,
            log=cast(FilteringBoundLogger, _Quiet()),  # duck-typed: drops every event
            status_pool_size=2,
            cancel_pool_size=2,
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.raw_server = await asyncio.start_server(self._answer_raw, "127.0.0.1", 0)
        raw_port = self.raw_server.sockets[0].getsockname()[1]
        self.app_client = self._client(f"http://127.0.0.1:{self.runner.addresses[0][1]}")
        self.raw_client = self._client(f"http://127.0.0.1:{raw_port}")
        await self.app_client.start()
        await self.raw_client.start()

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        reply = self.reply
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    async def _answer_raw(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request, write the raw answer, close the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            writer.write(self.reply.raw)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def call(self, client: ExchangeClient, endpoint: str) -> object:
        """One client call, run to its end on the rig's loop (a hang fails the test)."""

        async def run() -> object:
            async with asyncio.timeout(30):
                if endpoint == "cancel_all":
                    return await client.cancel_all("EXCHANGE_2")
                if endpoint == "open_orders":
                    return await client.open_orders("EXCHANGE_2")
                return (await client.order_status(ORDER_ID)).status

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        async def stop() -> None:
            await self.app_client.close()
            await self.raw_client.close()
            await self.runner.cleanup()
            self.raw_server.close()
            await self.raw_server.wait_closed()

        self.loop.run_until_complete(stop())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(scope="module")
def rig() -> Iterator[_Rig]:
    rig = _Rig()
    yield rig
    rig.close()


# Strategies: JSON values, answers shaped like (or nearly like) the documented ones.

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
IDS = st.lists(st.text(min_size=1, max_size=16), max_size=5)
STATUS_STRINGS = st.sampled_from(sorted(VENUE_STATUSES)) | st.text(min_size=1, max_size=16)


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()


@st.composite
def cancel_all_bodies(draw: st.DrawFn) -> tuple[bytes, list[str] | None]:
    """A body for cancel_all and the ids it must yield (None: any valid outcome)."""
    kind = draw(st.sampled_from(["valid", "near", "json", "bytes"]))
    if kind == "valid":
        ids = draw(IDS)
        extra = draw(st.dictionaries(st.sampled_from(["note", "count"]), JSON_VALUES, max_size=2))
        return _dumps({"data": {"orders_ids": ids, **extra}}), ids
    if kind == "near":
        document = draw(
            st.one_of(
                JSON_VALUES.map(lambda v: {"data": {"orders_ids": v}}),
                st.lists(JSON_VALUES, max_size=4).map(lambda v: {"data": {"orders_ids": v}}),
                JSON_VALUES.map(lambda v: {"data": v}),
                IDS.map(lambda v: {"orders_ids": v}),
            )
        )
        return _dumps(document), None
    if kind == "json":
        return _dumps(draw(JSON_VALUES)), None
    return draw(st.binary(max_size=200)), None


@st.composite
def order_status_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A body for the status of ORDER_ID and the status it must yield (None: any outcome)."""
    kind = draw(st.sampled_from(["valid", "near", "json", "bytes"]))
    if kind == "valid":
        status = draw(STATUS_STRINGS)
        order: dict[str, object] = {"status": status, "symbol": "BTCUSDT"}
        if draw(st.booleans()):
            order["order_id"] = ORDER_ID
        document = {"data": {"order": order}} if draw(st.booleans()) else {"data": order}
        return _dumps(document), status
    if kind == "near":
        document = draw(
            st.one_of(
                JSON_VALUES.map(lambda v: {"data": {"order": v}}),
                st.tuples(JSON_VALUES, JSON_VALUES).map(
                    lambda t: {"data": {"order": {"order_id": t[0], "status": t[1]}}}
                ),
                st.tuples(st.text(max_size=40), STATUS_STRINGS).map(
                    lambda t: {"data": {"order_id": t[0], "status": t[1]}}
                ),
                JSON_VALUES.map(lambda v: {"data": {"status": v}}),
            )
        )
        return _dumps(document), None
    if kind == "json":
        return _dumps(draw(JSON_VALUES)), None
    return draw(st.binary(max_size=200)), None


@st.composite
def listing_bodies(draw: st.DrawFn) -> tuple[bytes, None]:
    """A body for an open-orders page: documented, nearly so, or anything."""
    kind = draw(st.sampled_from(["valid", "near", "json", "bytes"]))
    if kind in ("valid", "near"):
        times = st.one_of(st.integers(), st.text(max_size=20), st.floats(), st.none())
        order = st.fixed_dictionaries(
            {"order_id": st.text(max_size=8) | st.integers(), "status": STATUS_STRINGS},
            optional={
                "created_at": st.integers(0, 2**64) if kind == "valid" else times,
                "quantity": st.text(max_size=10) | st.floats() | st.integers(),
                "exec_quantity": JSON_VALUES,
                "updated_at": times,
            },
        )
        orders = st.lists(order if kind == "valid" else order | JSON_VALUES, max_size=4)
        cursor = times if kind == "near" else st.integers(0, 2**64) | st.none()
        document = {"data": {"orders": draw(orders), "cursor": draw(cursor)}}
        return _dumps(document), None
    if kind == "json":
        return _dumps(draw(JSON_VALUES)), None
    return draw(st.binary(max_size=200)), None


PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
RETRY_AFTER = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "2.5",
            "nan",
            "inf",
            "-inf",
            "1e999",
            "",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 -0000",
            "Mon, 01 Jan 0001 00:00:00 +2359",
            "Sun, 99 Foo 2020 99:99:99 GMT",
        ]
    ),
    st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
    PRINTABLE,
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Retry-After": RETRY_AFTER,
        "Content-Type": st.sampled_from(["application/json", "text/html", "x/y; charset=zz"]),
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "x"]),
    },
)
STATUS_CODES = st.one_of(
    st.just(200),
    st.just(429),
    st.sampled_from([201, 204, 301, 304, 400, 401, 404, 429, 500, 503]),
    st.integers(200, 599),
)


def _check_answer(endpoint: str, call: Callable[[], object], expected: object) -> str:
    """Run one call: a valid result (equal to ``expected`` if given) or an ExchangeError."""
    error: ExchangeError | None = None
    try:
        result = call()
    except ExchangeError as exc:
        error = exc
    if error is not None:
        assert type(error) is not ExchangeError  # always a specific kind
        assert error.endpoint == endpoint
        OUTCOMES[f"{endpoint}.{error.kind}"] += 1
        return error.kind
    if endpoint == "cancel_all":
        assert isinstance(result, list)
        assert all(isinstance(i, str) and i for i in result)
    elif endpoint == "open_orders":
        assert isinstance(result, OrderPage)
        assert all(o.order_id and o.status for o in result.orders)
        assert (result.cursor is None) == (not result.orders)
    else:
        assert isinstance(result, str)
        assert result
    if expected is not None:
        assert result == expected
    OUTCOMES[f"{endpoint}.ok"] += 1
    return "ok"


NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@settings(max_examples=150, deadline=None)
@given(status=STATUS_CODES, headers=HEADERS, data=st.data())
@example(status=200, headers={}, data=None).via("deeply nested JSON")
def test_exchange_answers_give_a_result_or_an_exchange_error(
    rig: _Rig, endpoint: str, status: int, headers: dict[str, str], data: Any
) -> None:
    """Any status, headers and body: a valid result or an ExchangeError subclass, nothing else."""
    if data is None:  # the explicit example: RecursionError in json.loads
        body, expected = NESTED, None
    elif endpoint == "cancel_all":
        body, expected = data.draw(cancel_all_bodies(), label="body")
    elif endpoint == "open_orders":
        body, expected = data.draw(listing_bodies(), label="body")
    else:
        body, expected = data.draw(order_status_bodies(), label="body")
    rig.reply = _Reply(status=status, headers=headers, body=body)
    plain = 200 <= status < 300 and status != 204 and "Content-Encoding" not in headers
    outcome = _check_answer(
        endpoint,
        lambda: rig.call(rig.app_client, endpoint),
        expected if plain else None,
    )
    if plain and expected is not None:
        assert outcome == "ok"
    CASES[f"exchange.{endpoint}"] += 1


STATUS_LINES = st.one_of(
    st.sampled_from(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 429 Too Many Requests",
            b"HTTP/1.1 503 Service Unavailable",
            b"HTTP/1.1 100 Continue",
            b"HTTP/1.1 101 Switching Protocols",
            b"HTTP/2 200",
            b"HTTP/1.1 abc",
            b"",
        ]
    ),
    st.integers(0, 1000).map(lambda n: f"HTTP/1.1 {n} X".encode()),
)
HEADER_LINES = st.one_of(
    st.sampled_from(
        [
            b"Content-Length: 0",
            b"Content-Length: 7",
            b"Content-Length: 99999",
            b"Content-Length: -1",
            b"Content-Length: x",
            b"Content-Length: 5\r\nContent-Length: 6",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked",
            b"Content-Encoding: gzip",
            b"Content-Encoding: deflate",
            b"Retry-After: 1",
            b"Retry-After: 1e999",
            b"Connection: keep-alive",
            b"Connection: close",
            b"Content-Type: application/json",
            b"Upgrade: websocket",
            b" folded",
            b"no colon",
        ]
    ),
    st.binary(max_size=40),
)


@st.composite
def raw_answers(draw: st.DrawFn, endpoint: str) -> bytes:
    """Arbitrary bytes, or an HTTP answer with a fuzzed status line, headers and body."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    bodies = {
        "cancel_all": cancel_all_bodies(),
        "order_status": order_status_bodies(),
        "open_orders": listing_bodies(),
    }[endpoint]
    body = draw(bodies)[0]
    head = [draw(STATUS_LINES), *draw(st.lists(HEADER_LINES, max_size=5))]
    if draw(st.booleans()):
        head.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_raw_http_answers_give_a_result_or_an_exchange_error(
    rig: _Rig, endpoint: str, data: Any
) -> None:
    """Malformed HTTP (status line, framing, encodings, garbage): result or ExchangeError only."""
    rig.reply = _Reply(raw=data.draw(raw_answers(endpoint), label="raw"))
    _check_answer(endpoint, lambda: rig.call(rig.raw_client, endpoint), None)
    CASES[f"raw_http.{endpoint}"] += 1


# =========================================================================== configuration


TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(),
    st.text(max_size=16),
    st.datetimes().map(lambda d: d.replace(fold=0)),  # TOML has no fold
    st.dates(),
    st.times().map(lambda t: t.replace(fold=0)),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 1000),
    st.sampled_from([0, 0.0, -0.0, 1e-300, 1e308, 10**400]),
)
COUNTS = st.one_of(st.integers(-3, 100), st.sampled_from([0, 1, 2**63, 1.5, True]))
NAMES = st.one_of(st.sampled_from(["KILLSWITCH_API_KEY", "X-AUTH-APIKEY", "", " "]), st.text())
URLS = st.one_of(
    st.sampled_from(
        [
            "http://127.0.0.1:8080",
            "https://coinswitch.co",
            "http://localhost/",
            "http://[::1]:9/x",
            "http://[::1",
            "http://[abc]/",
            "http://127.0.0.1:99999",
            "http://localhost:abc",
            "https://a\uff03b/",
            "http://example.com",
            "ftp://127.0.0.1",
            "https://user:pw@x.test",
            "https://x.test/?q=1#f",
            "https://",
            "",
        ]
    ),
    st.builds(
        "{}://{}{}{}".format,
        st.sampled_from(["http", "https", "HTTP", "", "ws"]),
        st.sampled_from(["127.0.0.1", "localhost", "[::1]", "x.test", "[", "10.0.0.1", ""])
        | st.text(max_size=10),
        st.sampled_from(["", ":0", ":443", ":65536", ":-1", ":x"]),
        st.sampled_from(["", "/", "/api", "/a b", "/%zz"]) | st.text(max_size=6),
    ),
    st.text(),
)
URL_PATHS = st.one_of(st.sampled_from(["/trade/api/v2/futures/order", "/", "x", ""]), st.text())
FILE_PATHS = st.one_of(
    st.sampled_from(["/tmp/ks-fuzz/x", "rel/x", "~/x", "~nobody\x00/x", "\x00", "/" + "a" * 200]),
    st.text(max_size=30),
)


def _table(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A table with any subset of ``keys`` (each a plausible or an arbitrary value),
    sometimes with an unknown key, and sometimes not a table at all."""
    known = st.fixed_dictionaries(
        {}, optional={k: st.one_of(v, TOML_VALUES) for k, v in keys.items()}
    )
    unknown = st.dictionaries(st.text(max_size=8), TOML_VALUES, max_size=1)
    table = st.builds(lambda a, b, add: {**a, **b} if add else a, known, unknown, st.booleans())
    return st.one_of(table, table, table, TOML_VALUES)


RATE_LIMIT = _table({"requests": COUNTS, "per_seconds": NUMBERS, "margin": NUMBERS})
TARGET = _table({"exchange": NAMES, "symbols": st.lists(NAMES, max_size=3)})
SECTIONS: dict[str, st.SearchStrategy[Any]] = {
    "exchange": _table(
        {
            "base_url": URLS,
            "signing": st.sampled_from(["ed25519", "hmac-sha256", "rsa", ""]),
            "api_key_env": NAMES,
            "api_secret_env": NAMES,
            "cancel_all_path": URL_PATHS,
            "order_status_path": URL_PATHS,
            "open_orders_path": URL_PATHS,
            "closed_orders_path": URL_PATHS,
            "time_path": URL_PATHS,
            "request_timeout": NUMBERS,
            "dry_run": st.booleans(),
            "clock_sync_interval": NUMBERS,
            "headers": _table({"api_key": NAMES, "signature": NAMES, "epoch": NAMES}),
        }
    ),
    "cancel_all": _table({"rate_limit": RATE_LIMIT, "retry_base": NUMBERS, "retry_max": NUMBERS}),
    "targets": st.one_of(st.lists(TARGET, min_size=1, max_size=3), TOML_VALUES),
    "confirm": _table(
        {
            "max_concurrency": COUNTS,
            "poll_interval": NUMBERS,
            "max_poll_interval": NUMBERS,
            "deadline": NUMBERS,
            "unknown_after": COUNTS,
            "terminal_statuses": st.lists(NAMES, max_size=3),
            "rate_limit": RATE_LIMIT,
        }
    ),
    "triggers": _table(
        {
            "signal": _table({"enabled": st.booleans()}),
            "heartbeat": _table(
                {"enabled": st.booleans(), "timeout": NUMBERS, "arm_on_start": st.booleans()}
            ),
            "pnl": _table(
                {
                    "enabled": st.booleans(),
                    "path": FILE_PATHS,
                    "threshold": NUMBERS,
                    "stale_after": NUMBERS,
                }
            ),
        }
    ),
    "control": _table({"socket": FILE_PATHS}),
    "state": _table({"path": FILE_PATHS}),
    "log": _table(
        {
            "format": st.sampled_from(["json", "console", "xml"]),
            "level": st.sampled_from(["debug", "info", "warning", "error", "critical", "trace"]),
        }
    ),
    "daemon": _table({"shutdown_grace": NUMBERS}),
    "flat": _table({"rate_limit": RATE_LIMIT, "lookback_days": NUMBERS}),
    "guard": _table({"enabled": st.booleans(), "interval": NUMBERS}),
}
VALID_BASE: dict[str, Any] = {
    "exchange": {"base_url": "http://127.0.0.1:9"},
    "targets": [{"exchange": "EXCHANGE_2"}],
    "control": {"socket": "/tmp/ks-fuzz/ctl.sock"},
    "state": {"path": "/tmp/ks-fuzz/state.db"},
}


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Parsed TOML: random sections over a valid base (or none), sometimes an unknown one."""
    base = dict(VALID_BASE) if draw(st.booleans()) else {}
    chosen = draw(st.lists(st.sampled_from(sorted(SECTIONS)), unique=True, max_size=4))
    document = {**base, **{name: draw(SECTIONS[name], label=name) for name in chosen}}
    if draw(st.integers(0, 9)) == 0:
        document[draw(st.text(max_size=8))] = draw(TOML_VALUES)
    return document


def _toml_string(text: str) -> str:
    # JSON string escapes are TOML's, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime | date | time_of_day):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(document: dict[str, Any]) -> str:
    """The document as TOML text (every table inline)."""
    return "".join(f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in document.items())


def _check_config_error(exc: ConfigError) -> None:
    """A dotted key naming where, and a message the CLI can print on one line."""
    message = str(exc)
    assert message == f"{exc.key}: {exc.problem}"
    assert exc.key
    assert exc.problem
    assert message.isprintable()  # one line: no newline or other control character
    top = re.split(r"[.\[]", exc.key, maxsplit=1)[0]
    assert top in {*SECTIONS, "config"} or exc.problem == "unknown key"


def _check_config(config: Any) -> None:
    """An accepted config is usable: check-config can print it, the client can build its URL."""
    json.dumps(as_dict(config))
    URL(config.exchange.base_url)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ks-fuzz-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@settings(max_examples=300, deadline=None)
@given(document=config_documents())
@example(document={**VALID_BASE, "exchange": {"base_url": "http://[::1"}})
@example(document={**VALID_BASE, "exchange": {"base_url": "http://127.0.0.1:99999"}})
@example(document={**VALID_BASE, "exchange": {"request_timeout": 10**400}})
@example(document={**VALID_BASE, "state": {"path": "~nobody\x00/x"}})
@example(document={**VALID_BASE, "log": {"a\nb": 1}})
def test_config_documents_parse_or_raise_config_error(scratch: Path, document: Any) -> None:
    """Generated documents: a Config, or ConfigError (dotted key, one line); TOML text agrees."""
    try:
        parsed: Any = parse_config(document, base=scratch)
    except ConfigError as exc:
        _check_config_error(exc)
        parsed = exc
    else:
        _check_config(parsed)
    # The same document as a TOML file: load_config reaches the same verdict.
    path = scratch / "doc.toml"
    path.write_text(toml_text(document), encoding="utf-8")
    try:
        loaded: Any = load_config(path)
    except ConfigError as exc:
        loaded = exc
    if isinstance(loaded, ConfigError):
        _check_config_error(loaded)
        assert isinstance(parsed, ConfigError)
        assert str(loaded) == str(parsed)
    else:
        assert dataclasses.replace(loaded, source=None) == parsed
    CASES["config.document"] += 1


TOML_FRAGMENTS = st.sampled_from(
    [
        "[exchange]",
        "[[targets]]",
        "[confirm.rate_limit]",
        "[triggers.pnl]",
        "[a.b.c]",
        "[[exchange]]",
        'base_url = "http://127.0.0.1:1"',
        'exchange = "EXCHANGE_2"',
        "requests = 10",
        "per_seconds = 1e400",
        "x = " + "1" * 5000,
        "a = " + "[" * 3000 + "]" * 3000,
        "b = " + "{c = " * 1000 + "1" + "}" * 1000,
        'path = "\\u0000"',
        "symbols = []",
        "= =",
        "\x00",
        '"\\n" = 1',
        "t = 1979-05-27T07:32:00Z",
    ]
)
TOML_TEXTS = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(TOML_FRAGMENTS, st.text(max_size=20)), max_size=8).map("\n".join),
)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(TOML_TEXTS.map(lambda t: t.encode("utf-8")), st.binary(max_size=100)))
@example(raw=("a = " + "[" * 3000 + "]" * 3000).encode())
@example(raw=("x = " + "1" * 5000).encode())
def test_arbitrary_text_loads_or_raises_config_error(scratch: Path, raw: bytes) -> None:
    """Arbitrary bytes or text as the config file: a Config or ConfigError, nothing else."""
    path = scratch / "text.toml"
    path.write_bytes(raw)
    try:
        config = load_config(path)
    except ConfigError as exc:
        _check_config_error(exc)
    else:
        _check_config(config)
    CASES["config.text"] += 1


@st.composite
def bad_config_texts(draw: st.DrawFn) -> str:
    """A valid config with one value replaced: text that load_config refuses."""
    section = draw(st.sampled_from(sorted(set(SECTIONS) - {"targets"})))
    document = dict(VALID_BASE)
    document[section] = draw(SECTIONS[section])
    text = toml_text(document)
    if draw(st.booleans()):
        text += draw(TOML_FRAGMENTS) + "\n"
    return text


def _refused(path: Path) -> bool:
    try:
        load_config(path)
    except ConfigError:
        return True
    return False


@settings(max_examples=60, deadline=None)
@given(text=bad_config_texts())
def test_check_config_in_process_exits_2_with_one_line(scratch: Path, text: str) -> None:
    """``check-config`` on a refused config: exit 2, one stderr line ``config error: ...``."""
    path = scratch / "bad.toml"
    path.write_text(text, encoding="utf-8")
    assume(_refused(path))  # the mutation may happen to be valid
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["check-config", "--config", str(path)])
    assert code == 2
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("config error: ")
    CASES["cli.in_process"] += 1


@settings(max_examples=4, deadline=None)
@given(text=bad_config_texts())
@example(text=toml_text({**VALID_BASE, "exchange": {"base_url": "http://[::1"}}))
def test_check_config_process_exits_2_with_one_line(scratch: Path, text: str) -> None:
    """The real ``killswitch check-config`` process: exit status 2, exactly one stderr line."""
    path = scratch / "bad-cli.toml"
    path.write_text(text, encoding="utf-8")
    assume(_refused(path))
    done = subprocess.run(
        [sys.executable, "-m", "killswitch", "check-config", "--config", str(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("config error: ")
    CASES["cli.process"] += 1
