"""The human view of ``GET /status``: ``killswitch status`` and ``killswitch status --watch``.

Pure functions from the status body to text, so tests render them to a string.
Words are chosen so they cannot be misread: the switch's state says what it
means (``TRIPPED`` is latched until a reset), each trigger has its own state
beside it (a re-armed switch whose PnL is still low says the PnL trigger waits
for a recovery first), and durations read in s, min or h.
"""

from __future__ import annotations

from typing import Any, Final

from killswitch.kill.progress import format_eta

__all__ = [
    "STATE_WORDS",
    "duration",
    "exchange_problem",
    "format_status",
    "progress_bar",
    "render_watch",
]

STATE_WORDS: Final = {
    "ARMED": "ARMED: watching the triggers",
    "KILLING": "KILLING: cancelling and confirming every open order",
    "TRIPPED": "TRIPPED: the kill is done; latched until `killswitch reset`",
}

BAR_WIDTH: Final = 40


def duration(seconds: float | None) -> str:
    """``0.4 s``, ``42 s``, ``3.5 min``, ``2.0 h``."""
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{duration(seconds)} ago"


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[##########----------]  50/100``."""
    filled = 0 if total <= 0 else min(width, done * width // total)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


def _heartbeat(s: dict[str, Any]) -> str:
    state = (s.get("trigger_states") or {}).get("heartbeat")
    timeout = duration(s.get("heartbeat_timeout"))
    last = _ago(s.get("heartbeat_age"))
    if state is None:  # an older daemon
        state = "watching" if s.get("heartbeat_armed") else "not watching"
    return f"{state} (last heartbeat {last}, timeout {timeout})"


def _pnl(s: dict[str, Any]) -> str:
    state = (s.get("trigger_states") or {}).get("pnl") or "?"
    pnl = s.get("pnl")
    before = ", before the reset: it does not count" if s.get("pnl_before_reset") else ""
    reading = (
        "no reading yet" if pnl is None else f"last {pnl} ({_ago(s.get('pnl_age'))}{before})"
    ) + f", threshold {s.get('pnl_threshold')}"
    return f"{state} ({reading})"


def _call(c: dict[str, Any]) -> str:
    who = c.get("exchange") or c.get("endpoint") or "?"
    status = c.get("http_status")
    what = f"HTTP {status}" if status is not None else (c.get("error") or "failed")
    return f"{who} {what}" + (f" {c['message']!r}" if c.get("message") else "")


def exchange_problem(s: dict[str, Any]) -> str | None:
    """What is wrong with the exchange as the daemon last saw it, in words; None if nothing.

    The last signed call decides (a rate-limited 429 is a busy venue, not a failure);
    a failed start-up self-test is named while no later call has succeeded."""
    ex = s.get("exchange") or {}
    test = ex.get("self_test") or {}
    failed = [c for c in test.get("checks") or [] if not c.get("ok")]
    last = ex.get("last_call") or {}
    if last and not last.get("ok") and last.get("http_status") != 429:
        head = f"the last call failed: {_call(last)}"
        return head + (f"; the self-test failed: {', '.join(map(_call, failed))}" if failed else "")
    if failed and not last.get("ok"):
        return f"the self-test failed: {', '.join(map(_call, failed))}"
    if ex and ex.get("offset_ms") is None and ex.get("sync_failures"):
        return f"the server time never answered ({ex['sync_failures']} tries)"
    return None


def _exchange(s: dict[str, Any]) -> str:
    ex = s.get("exchange") or {}
    problem = exchange_problem(s)
    if problem is not None:
        return f"FAILING: {problem}; check with `killswitch check-config --online`"
    test = ex.get("self_test")
    tested = "self-test pending" if test is None else "self-test passed"
    offset = ex.get("offset_ms")
    clock = "clock not synced yet" if offset is None else f"clock offset {offset} ms"
    dry = "; DRY RUN: requests are logged, none sent" if ex.get("dry_run") else ""
    return f"ok ({tested}, {clock}){dry}"


def _last_kill(last: dict[str, Any] | None) -> str:
    if not last:
        return "none"
    head = f"{last.get('kill_id')} by {last.get('source')}: "
    if last.get("abandoned"):
        return head + f"abandoned ({last.get('why')})"
    ms = last.get("duration_ms")
    took = "?" if ms is None else duration(ms / 1000)
    return head + (
        f"{last.get('cancelled')} cancelled, {last.get('filled')} filled, "
        f"{last.get('partially_filled', 0)} partially filled, "
        f"{last.get('other')} other, {last.get('unknown')} unknown, "
        f"{last.get('unconfirmed')} unconfirmed, flat: {last.get('flat')}, "
        f"{last.get('leftover', 0)} leftover, in {took}"
    )


def _positions_rows(e: dict[str, Any] | None) -> list[tuple[str, str]]:
    """What the last kill left open (contract §12): one row each, and what is unknown."""
    if not e:
        return []
    flatten = e.get("flatten") or {}
    count = e.get("positions_open", 0)
    head = f"{count} open after kill {e.get('kill_id')}"
    if e.get("unreadable"):
        head += f"; UNKNOWN (could not be read): {', '.join(e['unreadable'])}"
    rows = [("positions", head if count or e.get("unreadable") else "none open (flat)")]
    for p in e.get("positions") or []:
        stops = p.get("stops_cancelled") or 0
        text = (
            f"{p.get('side')} {p.get('size')}, notional {p.get('notional')}, entry "
            f"{p.get('entry_price')}, mark {p.get('mark_price')}, uPnL {p.get('unrealised_pnl')}, "
            f"liquidation {p.get('liquidation_price')}"
        )
        if stops:
            text += f"; {stops} TP/SL cancelled by the kill: UNPROTECTED"
        done = flatten.get(p.get("symbol"))
        if done:
            text += f"; flatten: {done.get('outcome')}"
        rows.append((f"position:{p.get('symbol')}", text))
    return rows


def _progress_rows(p: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("progress", f"{progress_bar(p['confirmed'], p['total'])} confirmed"),
        (
            "estimate",
            f"{format_eta(p.get('eta_s'), p.get('eta_basis'))} "
            f"(running {duration(p.get('elapsed_s'))})",
        ),
    ]
    outcomes = p.get("outcomes") or {}
    if outcomes:
        rows.append(("outcomes", ", ".join(f"{n} {k}" for k, n in outcomes.items())))
    if p.get("sweeps_left"):
        rows.append(("sweeps", f"{p['sweeps_left']} cancel_all not yet acknowledged"))
    return rows


def _authority_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The halt of the trading units (§14) and a pending four-eyes reset (§13)."""
    rows = []
    halt = s.get("halt") or {}
    if halt.get("units"):
        units = ", ".join(halt["units"])
        if halt.get("state") == "off":
            rows.append(("halt", f"off ({halt.get('why')}): {units}"))
        else:
            failed = "; ".join(f"{f['unit']}: {f['problem']}" for f in halt.get("failed") or [])
            rows.append(
                (
                    "halt",
                    f"{halt.get('state')}: {units}" + (f" (FAILED {failed})" if failed else ""),
                )
            )
    pending = s.get("reset_pending")
    if pending:
        by = pending.get("by") or {}
        rows.append(
            (
                "reset",
                f"{pending.get('approvals')} of {pending.get('needed')} approvals, by "
                f"{by.get('user') or 'uid ' + str(by.get('uid'))}; lapses in "
                f"{duration(pending.get('lapses_in'))}",
            )
        )
    return rows


def format_status(s: dict[str, Any]) -> str:
    """``killswitch status``: one row per fact, the key a single word."""
    state = STATE_WORDS.get(s["state"], s["state"])
    if "exchange" in s and exchange_problem(s) is not None:
        state += ", but the exchange is FAILING (below): a kill may not get through"
    rows = [("state", state)]
    if s.get("progress"):
        rows += _progress_rows(s["progress"])
    if "exchange" in s:
        rows.append(("exchange", _exchange(s)))
    pid = s.get("pid")
    if pid is not None:
        up = "" if s.get("uptime") is None else f", up {duration(s['uptime'])}"
        rows.append(("daemon", f"pid {pid}, version {s.get('version')}{up}"))
    states = s.get("trigger_states") or {}
    if "signal" in states:
        how = "SIGUSR1 kills" if pid is None else f"SIGUSR1 kills: kill -USR1 {pid}"
        rows.append(("signal", f"{states['signal']} ({how})"))
    rows.append(("heartbeat", _heartbeat(s)))
    rows.append(("pnl", _pnl(s)))
    rows.append(("last_kill", _last_kill(s.get("last_kill"))))
    rows += _positions_rows(s.get("positions"))
    rows += _authority_rows(s)
    stuck = s.get("stuck")
    if stuck:
        rows.append(
            (
                "STUCK",
                f"{stuck.get('why')} (HTTP {stuck.get('http_status')}), next retry in "
                f"{duration(stuck.get('next_retry_in'))}; `killswitch reset --force` "
                "abandons the kill",
            )
        )
    store = s.get("store")
    if store and not store.get("ok"):
        rows.append(("store", f"NOT OK: {store.get('problem')}"))
    guard = s.get("guard")
    if guard and guard.get("last_run"):
        run = guard["last_run"]
        rows.append(
            ("guard", f"last run: {run.get('open')} open found, errors {run.get('errors')}")
        )
    cluster = s.get("cluster")
    if cluster:
        where = cluster.get("server") or ", ".join(cluster.get("servers") or [])
        link = "connected to" if cluster.get("connected") else "NOT connected to"
        rows.append(
            ("cluster", f"desk {cluster.get('desk')} of {cluster.get('firm')}, {link} {where}")
        )
    sentinel = s.get("sentinel")  # contract §15: this daemon watches another desk
    if sentinel:
        seen = sentinel.get("last_seen_s")
        heard = "never heard" if seen is None else f"last heard {duration(seen)} ago"
        blind = ", BLIND (cannot prove its link to NATS)" if sentinel.get("blind") else ""
        rows.append(
            ("sentinel", f"{sentinel.get('state')} desk {sentinel.get('desk')}, {heard}{blind}")
        )
    for name, lim in (s.get("rate_limit") or {}).items():
        rows.append(
            (
                f"budget:{name}",
                f"{lim['available']}/{lim['limit']} free now, next free in "
                f"{duration(lim['next_free_in'])}",
            )
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def render_watch(s: dict[str, Any], *, now: str, socket: str) -> str:
    """One screen of ``killswitch status --watch``: a header, then the status rows."""
    header = f"killswitch status --watch  {socket}  {now}  (Ctrl-C to stop)"
    return f"{header}\n{'-' * len(header)}\n{format_status(s)}\n"
