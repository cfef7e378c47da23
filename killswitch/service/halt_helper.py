"""What ``killswitch-halt.service`` runs, as root (contract §14):
``python -m killswitch.service.halt_helper --config PATH``.

``killswitch-halt.path`` starts it when the daemon's marker (``<state dir>/halt``)
appears.  It reads ``[halt] units`` from the config file itself — never from the
daemon, so an unprivileged daemon cannot make root stop anything else — stops
them all at once with ``systemctl stop``, writes the outcome to
``halt.result`` beside the marker (the daemon logs ``halt.stopped`` /
``halt.failed`` from it), and stays while the marker exists, so the path unit
does not start it again in a loop; a new kill's marker (another ``kill_id``)
stops the units again.  It exits once the marker is gone (a reset).  It imports only the config
reader (about 70 ms to start, against 300 ms for the whole CLI): the units stop
within the contract's second of the trigger.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from killswitch.config.load import load_config
from killswitch.config.reader import ConfigError

__all__ = ["MARKER", "RESULT", "keep_halted", "main", "stop_units"]

MARKER = "halt"  # in the daemon's state directory, beside state.db
RESULT = "halt.result"

STOP_TIMEOUT = 60.0  # seconds for every unit to stop


def stop_units(
    units: tuple[str, ...], systemctl: str = "systemctl"
) -> tuple[list[str], list[dict[str, str]]]:
    """``systemctl stop`` every unit at once; (stopped, failed with the problem)."""
    running = {
        unit: subprocess.Popen(  # fixed argv; unit names are checked at config load
            [systemctl, "stop", "--no-ask-password", "--", unit],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for unit in units
    }
    stopped: list[str] = []
    failed: list[dict[str, str]] = []
    for unit, proc in running.items():
        try:
            _, err = proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failed.append({"unit": unit, "problem": f"not stopped within {STOP_TIMEOUT:g} s"})
            continue
        if proc.returncode == 0:
            stopped.append(unit)
        else:
            problem = (err.strip().splitlines() or [f"systemctl exit {proc.returncode}"])[-1]
            failed.append({"unit": unit, "problem": problem})
    return stopped, failed


def _kill_id(marker: Path) -> str | None:
    try:
        body = json.loads(marker.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "unreadable"
    return str(body.get("kill_id")) if isinstance(body, dict) else "unreadable"


def _write_result(path: Path, body: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body))
    tmp.chmod(0o644)
    os.replace(tmp, path)


def keep_halted(config_path: Path, *, poll: float = 0.1, systemctl: str = "systemctl") -> int:
    """Stop the units for each new marker, until the marker is gone; the exit status."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    directory = config.state.path.parent
    marker, result = directory / MARKER, directory / RESULT
    done: str | None = None
    while (kill_id := _kill_id(marker)) is not None:
        if kill_id != done:
            started = time.monotonic()
            stopped, failed = stop_units(config.halt.units, systemctl)
            took = round((time.monotonic() - started) * 1000, 1)
            _write_result(
                result,
                {"kill_id": kill_id, "stopped": stopped, "failed": failed, "duration_ms": took},
            )
            print(f"killswitch tripped (kill {kill_id}): stopped {stopped}, failed {failed}")
            done = kill_id
        time.sleep(poll)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m killswitch.service.halt_helper",
        description="(run as root by killswitch-halt.service) stop the [halt] units while"
        " the switch is tripped",
    )
    parser.add_argument("--config", required=True, metavar="PATH", help="the TOML config file")
    return keep_halted(Path(parser.parse_args(argv).config))


if __name__ == "__main__":
    sys.exit(main())
