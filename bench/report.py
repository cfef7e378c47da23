"""Figures, their percentiles, the table, the machine, and how busy it was."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Figure", "LoadMeter", "machine", "percentile", "render_table"]


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Figure:
    """One measured figure: its samples and what it is held against.

    ``base`` is the baseline's value for the ratio (another figure's p99, or a
    bound); ``ratio`` is this figure's p99 over it.  ``met`` is None for
    figures given for context only.
    """

    key: str
    title: str
    unit: str
    samples: list[float]
    target: str = ""
    met: bool | None = None
    base: float | None = None
    base_label: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def ratio(self) -> float | None:
        if self.base is None or self.base == 0 or not self.samples:
            return None
        return self.p99 / self.base

    def to_json(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"n": self.n}
        if self.samples:
            summary.update(p50=self.p50, p99=self.p99, max=self.max, min=self.min)
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            **summary,
            "base": self.base,
            "base_label": self.base_label,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "note": self.note,
            "details": self.details,
            "samples": self.samples,
        }


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def render_table(figures: list[Figure]) -> str:
    """A Markdown table, readable as plain text too."""
    head = ["figure", "unit", "n", "p50", "p99", "max", "vs baseline (p99)", "target", "met"]
    rows: list[list[str]] = []
    for f in figures:
        single = f.n == 1
        ratio = f.ratio
        vs = "" if ratio is None else f"{ratio:.2f}x {f.base_label} ({fmt(f.base)})"
        met = {True: "yes", False: "**NO**", None: "—"}[f.met]
        rows.append(
            [
                f.title,
                f.unit,
                str(f.n),
                fmt(f.p50) if f.samples else "",
                "" if single or not f.samples else fmt(f.p99),
                "" if single or not f.samples else fmt(f.max),
                vs,
                f.target,
                met,
            ]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def _cpu_model() -> str:
    try:
        for raw in Path("/proc/cpuinfo").read_text().splitlines():
            if raw.startswith("model name"):
                return raw.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import aiohttp

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "aiohttp": aiohttp.__version__,
        "loadavg_at_start": list(os.getloadavg()),
    }


def _system_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class LoadMeter:
    """How busy the machine was during a scenario, and how much of it was not us.

    "Ours" is this process plus every child it has waited for (the daemon, the
    sim and the helpers are all stopped and reaped inside a scenario).
    """

    def __init__(self) -> None:
        self._start = _system_ticks()
        self._ours = self._our_seconds()
        self._wall = time.monotonic()

    @staticmethod
    def _our_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self) -> dict[str, float]:
        busy0, total0 = self._start
        busy1, total1 = _system_ticks()
        ticks = os.sysconf("SC_CLK_TCK")
        cpus = len(os.sched_getaffinity(0))
        wall = time.monotonic() - self._wall
        busy = (busy1 - busy0) / ticks
        ours = self._our_seconds() - self._ours
        total = (total1 - total0) / ticks or 1.0
        return {
            "seconds": round(wall, 1),
            "machine_busy_pct": round(100 * busy / total, 1),
            "ours_pct_of_machine": round(100 * ours / (wall * cpus), 1) if wall else 0.0,
            "others_pct_of_machine": round(100 * max(0.0, busy - ours) / (wall * cpus), 1)
            if wall
            else 0.0,
        }
