"""Positions (contract §12): the venue's answer read strictly, the scope of a kill's read,
what the kill learned of its stops, the config keys, the status text, the sim's positions."""

from __future__ import annotations

from decimal import Decimal
from types import MappingProxyType

import pytest

from killswitch.config.load import parse_config
from killswitch.config.reader import ConfigError
from killswitch.exchange.orders import VenueOrder
from killswitch.exchange.positions import parse_placed, parse_positions
from killswitch.kill.exposure import plan_scope
from killswitch.kill.order_facts import OrderFacts
from killswitch.service.status_view import format_status
from killswitch.sim.positions import PositionBook

POSITION = {
    "symbol": "BTCUSDT",
    "position_side": "SHORT",
    "position_size": "0.25",
    "position_value": "15000",
    "avg_entry_price": "60000",
    "mark_price": "60000",
    "unrealised_pnl": "0",
    "liquidation_price": "66000",
}


def test_a_positions_answer_is_read_with_decimals_and_a_closed_one_is_no_position() -> None:
    """Numbers are Decimal; an empty list or a size of 0 is no position."""
    (short,) = parse_positions({"data": [POSITION]}, "BTCUSDT")
    assert (short.side, short.size, short.close_side) == ("SHORT", Decimal("0.25"), "BUY")
    assert short.value() == Decimal(15000)
    assert parse_positions({"data": []}, "BTCUSDT") == ()
    assert parse_positions({"data": [{**POSITION, "position_size": "0"}]}, "BTCUSDT") == ()


@pytest.mark.parametrize(
    "document",
    [
        {"data": {"positions": []}},
        {"data": None},
        {},
        {"data": [{**POSITION, "position_side": "BOTH"}]},
        {"data": [{**POSITION, "position_size": "lots"}]},
        {"data": [{**POSITION, "symbol": "ETHUSDT"}]},
        {"data": [{**POSITION, "position_size": "-1"}]},
    ],
)
def test_an_unreadable_positions_answer_is_an_error_never_no_position(document: object) -> None:
    """Anything but a list of readable positions of the symbol asked for raises."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        parse_positions(document, "BTCUSDT")  # type: ignore[arg-type]


def test_a_placed_order_needs_its_id() -> None:
    """The place-order answer's order_id is required."""
    assert parse_placed({"data": {"order_id": "o-1"}}).order_id == "o-1"
    with pytest.raises(ValueError, match="order_id"):
        parse_placed({"data": {}})


def test_the_scope_is_targets_then_orders_then_positions_symbols_each_once() -> None:
    """Targets' symbols, the kill's orders' symbols, positions.symbols on each exchange."""
    config = parse_config(
        {
            "targets": [{"exchange": "EXCHANGE_2", "symbols": ["BTCUSDT"]}],
            "positions": {"symbols": ["SOLUSDT", "BTCUSDT"]},
        }
    )
    scope = plan_scope(config, [("EXCHANGE_2", "ETHUSDT"), ("EXCHANGE_2", "BTCUSDT")])
    assert scope == [("EXCHANGE_2", s) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]


def _order(order_id: str, symbol: str, order_type: str, status: str) -> VenueOrder:
    raw = MappingProxyType({"order_type": order_type})
    return VenueOrder(order_id, "EXCHANGE_2", symbol, status, 1, None, None, None, raw)


def test_stops_cancelled_counts_the_kills_tp_sl_orders_that_did_not_fill() -> None:
    """STOP_MARKET / TAKE_PROFIT_MARKET of the kill count per symbol unless they filled;
    a LIMIT order or an order of another kill does not."""
    facts = OrderFacts()
    facts.seen(_order("a", "BTCUSDT", "STOP_MARKET", "CANCELLATION_RAISED"))
    facts.seen(_order("b", "BTCUSDT", "TAKE_PROFIT_MARKET", "CANCELLED"))
    facts.seen(_order("c", "BTCUSDT", "STOP_MARKET", "EXECUTED"))
    facts.seen(_order("d", "ETHUSDT", "LIMIT", "CANCELLED"))
    facts.seen(_order("e", "ETHUSDT", "STOP_MARKET", "CANCELLED"))
    statuses = {"a": "CANCELLED", "b": "CANCELLED", "c": "EXECUTED", "d": "CANCELLED"}
    counts = facts.stops_cancelled(statuses, "EXCHANGE_2")
    assert dict(counts) == {("EXCHANGE_2", "BTCUSDT"): 2}
    assert facts.symbols(statuses, "EXCHANGE_2") == [
        ("EXCHANGE_2", "BTCUSDT"),
        ("EXCHANGE_2", "ETHUSDT"),
    ]


@pytest.mark.parametrize(
    ("section", "key", "problem"),
    [
        ({"flatten": {"max_notional": -1}}, "flatten.max_notional", "at least"),
        ({"flatten": {"enabled": "yes"}}, "flatten.enabled", ""),
        ({"flatten": {"limit": 1}}, "flatten.limit", ""),
        ({"positions": {"symbols": [""]}}, "positions.symbols", "strings"),
        ({"positions": {"rate_limit": {"requests": 0}}}, "positions.rate_limit.requests", ""),
        ({"exchange": {"positions_path": "positions"}}, "exchange.positions_path", "'/'"),
    ],
)
def test_bad_positions_and_flatten_keys_are_refused_by_name(
    section: dict[str, object], key: str, problem: str
) -> None:
    """Each bad value is one error naming its dotted key."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"targets": [{"exchange": "EXCHANGE_2"}], **section})
    assert str(caught.value).startswith(key + ":")
    assert problem in str(caught.value)


def test_status_text_shows_unprotected_and_unknown_positions() -> None:
    """`killswitch status`: one row per position, UNPROTECTED when its stops were cancelled,
    the unreadable symbols as UNKNOWN."""
    text = format_status(
        {
            "state": "TRIPPED",
            "positions": {
                "kill_id": "k1",
                "positions_open": 1,
                "unreadable": ["ETHUSDT"],
                "positions": [
                    {"symbol": "BTCUSDT", "side": "LONG", "size": "0.5", "stops_cancelled": 1}
                ],
                "flatten": {"BTCUSDT": {"outcome": "refused"}},
            },
        }
    )
    assert "1 open after kill k1; UNKNOWN (could not be read): ETHUSDT" in text
    assert "position:BTCUSDT" in text
    assert "UNPROTECTED; flatten: refused" in text


def test_sim_fills_grow_shrink_close_and_flip_and_reduce_only_never_flips() -> None:
    """The sim's position book follows VENUE.md, and counts what a switch must never do."""
    book = PositionBook()
    book.fill("E", "S", "BUY", Decimal(2), Decimal(100), 0)
    book.fill("E", "S", "BUY", Decimal(2), Decimal(200), 0)
    (long,) = book.of("E", "S")
    assert (long.side, long.size, long.entry_price) == ("LONG", Decimal(4), Decimal(150))
    book.fill("E", "S", "SELL", Decimal(1), Decimal(100), 0)
    assert book.of("E", "S")[0].size == Decimal(3)
    assert book.fill("E", "S", "SELL", Decimal(5), Decimal(100), 0, reduce_only=True) == 3
    assert (book.of("E", "S"), book.flips, book.overcloses) == ([], 0, 1)
    assert book.fill("E", "S", "SELL", Decimal(1), Decimal(100), 0, reduce_only=True) == 0
    assert book.overcloses == 2
    book.fill("E", "S", "BUY", Decimal(1), Decimal(100), 0)
    book.fill("E", "S", "SELL", Decimal(3), Decimal(100), 0)
    assert (book.of("E", "S")[0].side, book.of("E", "S")[0].size, book.flips) == (
        "SHORT",
        Decimal(2),
        1,
    )
