"""Alerts (contract §16), below the daemon: config, which events alert and how often, the
dedup_key across a restart, PagerDuty resolves, the bounded queue, the words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from killswitch.alerts import Alert, Alerter, Receiver, Severity, load_receivers
from killswitch.alerts.formats import body, words
from killswitch.alerts.queue import ReceiverQueue
from killswitch.config.alerting import DEFAULT_EVENTS, AlertsConfig
from killswitch.config.load import parse_config
from killswitch.config.reader import ConfigError
from killswitch.exchange.credentials import Secret
from killswitch.store.alerts import AlertTable
from killswitch.store.state import StateStore
from tests.fakes import FakeClock

URL = "https://hooks.example.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"


def _base(**extra: Any) -> dict[str, Any]:
    return {
        "exchange": {"base_url": "https://coinswitch.co"},
        "targets": [{"exchange": "E"}],
        **extra,
    }


def _receivers(*formats: str) -> tuple[Receiver, ...]:
    def key(fmt: str) -> Secret | None:
        return Secret("k" * 32) if fmt == "pagerduty" else None

    return tuple(
        Receiver(f"r-{fmt}", fmt, Secret(URL), key(fmt), frozenset(DEFAULT_EVENTS))
        for fmt in formats
    )


@pytest.mark.parametrize(
    ("alerts", "key"),
    [
        ({"webhook": [{"format": "json"}]}, "alerts.webhook[0].url_env"),
        ({"webhook": [{"url_env": "U", "format": "teams"}]}, "alerts.webhook[0].format"),
        (
            {"webhook": [{"url_env": "U", "format": "pagerduty"}]},
            "alerts.webhook[0].routing_key_env",
        ),
        (
            {"webhook": [{"url_env": "U", "routing_key_env": "K"}]},
            "alerts.webhook[0].routing_key_env",
        ),
        ({"webhook": [{"url_env": "U", "events": []}]}, "alerts.webhook[0].events"),
        ({"webhook": [{"url_env": "U"}, {"url_env": "U"}]}, "alerts.webhook"),
        ({"webhook": [{"url_env": "U", "url": "https://x"}]}, "alerts.webhook[0].url"),
        ({"max_queued": 0}, "alerts.max_queued"),
    ],
)
def test_bad_alerts_config_names_the_key(alerts: dict[str, Any], key: str) -> None:
    """Each bad [[alerts.webhook]] value is refused naming its dotted key."""
    with pytest.raises(ConfigError) as caught:
        parse_config(_base(alerts=alerts))
    assert caught.value.key == key


@pytest.mark.parametrize("listen", ["9464", "localhost:9464", "127.0.0.1:99999", "1.2.3.4:"])
def test_bad_metrics_listen_names_the_key(listen: str) -> None:
    """[metrics] listen must be IP:PORT."""
    with pytest.raises(ConfigError) as caught:
        parse_config(_base(metrics={"listen": listen}))
    assert caught.value.key == "metrics.listen"


def test_metrics_listen_and_keep_kills_parse() -> None:
    """``[::1]:9464`` is an IPv6 listener; ``keep_kills`` is read into [state]."""
    config = parse_config(_base(metrics={"listen": "[::1]:9464"}, state={"keep_kills": 5}))
    assert config.metrics.listen == ("::1", 9464)
    assert config.state.keep_kills == 5
    assert parse_config(_base()).state.keep_kills == 1000


def test_receiver_secrets_come_from_the_environment_and_errors_never_show_them() -> None:
    """The URL and key are read from the named variables; a missing one names the key, an
    http:// URL to a remote host is refused without the URL in the message."""
    config = parse_config(
        _base(alerts={"webhook": [{"url_env": "PD_URL", "format": "pagerduty",
                                   "routing_key_env": "PD_KEY"}]})
    ).alerts  # fmt: skip
    (receiver,) = load_receivers(config, {"PD_URL": URL, "PD_KEY": "key-" + "9" * 28})
    assert receiver.url.reveal() == URL
    assert "XXXX" not in repr(receiver)
    with pytest.raises(ConfigError) as missing:
        load_receivers(config, {"PD_URL": URL})
    assert missing.value.key == "alerts.webhook[0].routing_key_env"
    plain = "http://hooks.example.com/services/SECRETTOKEN"
    with pytest.raises(ConfigError) as insecure:
        load_receivers(config, {"PD_URL": plain, "PD_KEY": "k" * 32})
    assert "SECRETTOKEN" not in str(insecure.value)
    assert insecure.value.key == "alerts.webhook[0].url_env"


def _alerter(
    path: Path, clock: FakeClock, *formats: str, **config: Any
) -> tuple[Alerter, StateStore]:
    store = StateStore(path)
    store.open()
    alerter = Alerter(
        AlertsConfig(**config), _receivers(*formats), store, clock, structlog.get_logger()
    )
    return alerter, store


def _event(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, "level": "warning", "timestamp": "2026-01-01T00:00:00Z", **fields}


def _queued(alerter: Alerter, receiver: str) -> list[Alert]:
    return alerter._queues[receiver].pending()


async def test_few_and_precise_and_the_dedup_key_survives_a_restart(tmp_path: Path) -> None:
    """A coalesced trigger does not alert; the same rejection of one kill alerts once per
    repeat_after (the next carrying ``suppressed``); after a restart the numbering goes on
    and the pending alerts come back with their keys."""
    clock = FakeClock()
    alerter, store = _alerter(tmp_path / "s.db", clock, "json", repeat_after=60)
    alerter.open(None)
    alerter.listen(_event("trigger.fired", kill_id="k1", source="signal", coalesced=False))
    alerter.listen(_event("trigger.fired", kill_id="k1", source="pnl", coalesced=True))
    for _ in range(3):
        alerter.listen(_event("exchange.rejected", kill_id="k1", http_status=422))
    alerter.listen(_event("order.status", kill_id="k1"))  # not an alerting event
    clock._now += 61
    alerter.listen(_event("exchange.rejected", kill_id="k1", http_status=422))
    keys = [a.dedup_key for a in _queued(alerter, "r-json")]
    assert keys == ["k1:trigger.fired:1", "k1:exchange.rejected:1", "k1:exchange.rejected:2"]
    assert _queued(alerter, "r-json")[-1].fields["suppressed"] == 2
    await store.flush()
    store.close()

    again, store = _alerter(tmp_path / "s.db", clock, "json", repeat_after=60)
    again.open("k1")
    clock._now += 61
    again.listen(_event("exchange.rejected", kill_id="k1", http_status=422))
    keys = [a.dedup_key for a in _queued(again, "r-json")]
    assert keys[:3] == ["k1:trigger.fired:1", "k1:exchange.rejected:1", "k1:exchange.rejected:2"]
    assert keys[3] == "k1:exchange.rejected:3"
    store.close()


async def test_pagerduty_reset_resolves_the_incidents_of_its_kill(tmp_path: Path) -> None:
    """PagerDuty: a kill's alerts trigger incidents; its reset resolves each by its
    dedup_key; a JSON receiver gets the reset as an alert of its own."""
    alerter, store = _alerter(tmp_path / "s.db", FakeClock(), "pagerduty", "json")
    alerter.open(None)
    alerter.listen(_event("trigger.fired", kill_id="k9", source="manual"))
    alerter.listen(_event("kill.completed", kill_id="k9", flat=False, level="info"))
    alerter.listen(_event("switch.reset", force=False))
    pd = [(a.action.value, a.dedup_key) for a in _queued(alerter, "r-pagerduty")]
    assert pd == [
        ("trigger", "k9:trigger.fired:1"),
        ("trigger", "k9:kill.completed:1"),
        ("resolve", "k9:trigger.fired:1"),
        ("resolve", "k9:kill.completed:1"),
    ]
    assert [a.dedup_key for a in _queued(alerter, "r-json")][-1] == "k9:switch.reset:1"
    resolve = body(_queued(alerter, "r-pagerduty")[2], "pagerduty", "k" * 32)
    assert resolve == {
        "routing_key": "k" * 32,
        "event_action": "resolve",
        "dedup_key": "k9:trigger.fired:1",
    }
    trigger = body(_queued(alerter, "r-pagerduty")[1], "pagerduty", "k" * 32)
    assert trigger["payload"]["severity"] == "critical"  # not flat
    await store.flush()
    rows = AlertTable(store).pending()
    assert {r.receiver for r in rows} == {"r-pagerduty", "r-json"}
    assert all(URL not in str(r) for r in rows)
    store.close()


def test_a_full_queue_drops_the_oldest_non_critical_never_a_critical() -> None:
    """Past the limit the oldest non-critical alert goes; criticals stay (up to 4x the limit)."""
    dropped: list[Alert] = []
    queue = ReceiverQueue(10, dropped.append)

    def alert(n: int, severity: Severity) -> Alert:
        return Alert("r", f"daemon:e:{n}", "e", None, severity, {}, 0.0)

    for n in range(5):
        queue.add(alert(n, Severity.CRITICAL))
    for n in range(5, 30):
        queue.add(alert(n, Severity.WARNING))
    kept = queue.pending()
    assert len(kept) == 10
    assert [a.dedup_key for a in kept[:5]] == [f"daemon:e:{n}" for n in range(5)]
    assert all(not a.critical for a in dropped)
    for n in range(30, 70):
        queue.add(alert(n, Severity.CRITICAL))
    assert len(queue) == 40
    assert any(a.critical for a in dropped)  # only past 4x the limit


def test_the_listener_never_raises() -> None:
    """A malformed event or a failing store never reaches the log call (counted instead)."""
    store = StateStore(Path("/nonexistent/dir/s.db"))
    alerter = Alerter(
        AlertsConfig(), _receivers("json"), store, FakeClock(), structlog.get_logger()
    )
    alerter._early = None  # as if open: the insert on a store never opened raises inside
    alerter.listen({"event": "trigger.fired"})
    assert alerter.errors == 1


def test_the_words_say_what_happened_and_what_to_do() -> None:
    """A kill not proven flat with positions left says so, with what to do."""
    alert = Alert(
        "r", "k:kill.completed:1", "kill.completed", "k", Severity.CRITICAL,
        {"source": "heartbeat", "reason": "no heartbeat for 10.0s", "orders": 40,
         "cancelled": 37, "filled": 2, "partially_filled": 1, "flat": False, "leftover": 3,
         "positions_open": 2, "duration_ms": 2500},
        0.0,
    )  # fmt: skip
    text = words(alert)
    for needle in ("heartbeat", "37 cancelled", "2 filled", "1 partially filled", "NOT proven flat",
                   "3 leftover", "2 position(s) left OPEN", "What to do"):  # fmt: skip
        assert needle in text, needle
    assert body(alert, "slack") == {"text": text}
    assert body(alert, "json")["dedup_key"] == "k:kill.completed:1"


def test_receiver_secrets_from_the_credentials_directory(tmp_path: Path) -> None:
    """Under systemd ``LoadCredential=`` the URL is the file named by ``url_env`` in
    ``$CREDENTIALS_DIRECTORY`` (its trailing newline stripped)."""
    (tmp_path / "KILLSWITCH_SLACK_URL").write_text(URL + "\n")
    config = parse_config(
        _base(alerts={"webhook": [{"url_env": "KILLSWITCH_SLACK_URL", "format": "slack"}]})
    ).alerts
    (receiver,) = load_receivers(config, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert receiver.url.reveal() == URL
    assert receiver.name == "KILLSWITCH_SLACK_URL"


async def test_a_store_that_cannot_open_still_alerts_what_start_up_logged(tmp_path: Path) -> None:
    """``store.unavailable`` is logged before the alerts open: it is kept and queued at open,
    in memory only (no database to hold it), so it is still sent."""
    (tmp_path / "file").write_text("")
    store = StateStore(tmp_path / "file" / "state.db")  # a path under a regular file
    assert store.open() is not None
    alerter = Alerter(
        AlertsConfig(), _receivers("slack"), store, FakeClock(), structlog.get_logger()
    )
    alerter.listen(_event("store.unavailable", level="critical", problem="Not a directory"))
    assert _queued(alerter, "r-slack") == []
    alerter.open(None)
    (alert,) = _queued(alerter, "r-slack")
    assert alert.dedup_key == "daemon:store.unavailable:1"
    assert alert.critical
    assert "fails closed" in words(alert)
    store.close()
