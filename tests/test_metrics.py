"""Metrics for everything: requests of every endpoint by outcome, kill and flat durations,
kills by source, the clock offset and the process collector."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.test_integration import _until, running  # noqa: F401  (the fixture)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_after_a_kill(running: Any) -> None:  # noqa: F811
    """After one manual kill: requests by endpoint and outcome for every endpoint used
    (time and listings too), one observation in each duration histogram, the kill counted
    by its source, a clock offset, and process_* wherever /proc/stat is readable."""
    daemon, sim, logs = await running()
    sim.seed({"BTCUSDT": 30})
    await _until(logs, "exchange.self_test")
    daemon.parts.answers.trigger("metrics")
    done = await _until(logs, "kill.completed")
    # The switch goes TRIPPED (the duration histograms) a loop turn after kill.completed.
    tripped = await _until(logs, "switch.state", count=2)  # KILLING, then TRIPPED
    assert tripped["state"] == "TRIPPED"
    got = samples(daemon.parts.answers.metrics().decode())

    sent = daemon.parts.exchange.requests_sent
    assert {"cancel_all", "open_orders", "time"} <= set(sent)
    for endpoint, by_outcome in sent.items():
        for outcome, n in by_outcome.items():
            key = (
                "killswitch_exchange_requests_sent_total",
                (("endpoint", endpoint), ("outcome", outcome)),
            )
            assert got[key] == n
    assert got[("killswitch_kills_total", (("source", "manual"),))] == 1
    assert got[("killswitch_kill_duration_seconds_count", ())] == 1
    assert got[("killswitch_kill_duration_seconds_sum", ())] == done["duration_ms"] / 1000
    assert got[("killswitch_kill_flat_seconds_count", ())] == 1
    offset = got[("killswitch_exchange_clock_offset_seconds", ())]
    assert not math.isnan(offset)
    assert abs(offset) < 5
    has_process = ("process_resident_memory_bytes", ()) in got
    assert has_process == os.access(Path("/proc/stat"), os.R_OK)
