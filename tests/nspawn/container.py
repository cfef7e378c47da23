"""A Debian root file system booted with ``systemd-nspawn -b``, driven from outside.

The test session never writes into the cached tree: it mounts an overlay (the
cache as the read-only lower layer, a temporary upper layer) or, where overlayfs
is not available, copies the tree with ``cp -a --reflink=auto``.  The container
shares the host's network (a loopback port inside is one outside) and is driven
with ``nsenter`` into the namespaces of its init, the grandchild of the nspawn
process (there is no host systemd to register it with, so ``machinectl`` and
``systemd-run --machine`` cannot reach it).

:meth:`Container.close` powers the container off, kills whatever is left and
unmounts the overlay; it is safe to call more than once and after a failed boot.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["BootFailed", "Container", "JournalEntry"]

JournalEntry = dict[str, Any]

# The container must be gone even when pytest itself is interrupted.
_LIVE: list[Container] = []


@atexit.register
def _close_all() -> None:
    for container in list(_LIVE):
        container.close()


class BootFailed(Exception):
    """The container could not be booted here; the message says why."""


def _tool(name: str) -> str:
    """The absolute path of a host tool (util-linux, coreutils)."""
    path = shutil.which(name)
    if path is None:
        raise BootFailed(f"{name} not found on this machine")
    return path


def _die_with_parent() -> None:
    """In the nspawn child: SIGTERM it if the test process dies (even by SIGKILL);
    nspawn then halts the container."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _host_children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children.extend(int(c) for c in (task / "children").read_text().split())
    return children


def _ns_pid(pid: int) -> list[int]:
    """The ``NSpid:`` line of /proc/PID/status: the pid in each nested namespace."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []


class Container:
    """One booted container.  Use :meth:`boot`, then :meth:`close` (always)."""

    def __init__(self, lower: Path, workdir: Path) -> None:
        self.lower = lower
        self.workdir = workdir
        self.root = workdir / "root"
        self.overlay = False
        self.tmpfs: Path | None = None
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.console = workdir / "console.log"
        self._closed = False

    # ------------------------------------------------------------------ set-up

    @classmethod
    def prepare(cls, lower: Path) -> Container:
        """A writable copy of ``lower`` (overlay, else a copy) in a fresh temp dir."""
        workdir = Path(tempfile.mkdtemp(prefix="killswitch-nspawn-", dir="/var/tmp"))
        container = cls(lower, workdir)
        _LIVE.append(container)
        try:
            container._make_root()
        except BaseException:
            container.close()
            raise
        return container

    def _make_root(self) -> None:
        # The writable layer on a tmpfs: fast to fill, and gone with one umount
        # (removing a venv's files one by one took seconds on a loaded machine).
        layer = self.workdir / "layer"
        layer.mkdir()
        if self._mount("tmpfs", "tmpfs", "-o", "mode=0755,size=2g", str(layer)).returncode == 0:
            self.tmpfs = layer
        upper, work = layer / "upper", layer / "work"
        for d in (self.root, upper, work):
            d.mkdir()
        options = f"lowerdir={self.lower},upperdir={upper},workdir={work}"
        mounted = self._mount("overlay", "overlay", "-o", options, str(self.root))
        if mounted.returncode == 0:
            self.overlay = True
            return
        self.root.rmdir()
        copied = subprocess.run(
            [_tool("cp"), "-a", "--reflink=auto", str(self.lower), str(self.root)],
            capture_output=True,
            text=True,
            check=False,
        )
        if copied.returncode != 0:
            raise BootFailed(
                f"neither overlayfs ({mounted.stderr.strip()}) nor a copy "
                f"({copied.stderr.strip()}) of {self.lower} worked"
            )

    @staticmethod
    def _mount(kind: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_tool("mount"), "-t", kind, *args], capture_output=True, text=True, check=False
        )

    @staticmethod
    def _umount(path: Path) -> None:
        umount = _tool("umount")
        if subprocess.run([umount, str(path)], capture_output=True, check=False).returncode:
            subprocess.run([umount, "-l", str(path)], capture_output=True, check=False)

    def boot(self, timeout: float = 60.0) -> None:
        """``systemd-nspawn -b`` and wait until systemd reports the system up."""
        nspawn = shutil.which("systemd-nspawn")
        if nspawn is None:
            raise BootFailed("systemd-nspawn not installed (Debian package systemd-container)")
        with self.console.open("wb") as console:
            self.nspawn = subprocess.Popen(
                [
                    nspawn,
                    "--quiet",
                    "--register=no",
                    "--keep-unit",
                    f"--machine=ks-{self.workdir.name[-8:].lower().replace('_', '-')}",
                    "-D",
                    str(self.root),
                    "-b",
                    "--console=pipe",
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # prctl only; safe before exec
            )
        deadline = time.monotonic() + timeout
        while self.init_pid is None:
            if self.nspawn.poll() is not None:
                raise BootFailed(
                    f"systemd-nspawn exited with {self.nspawn.returncode}: {self.console_tail()}"
                )
            if time.monotonic() > deadline:
                raise BootFailed(f"no container init after {timeout} s: {self.console_tail()}")
            self.init_pid = self._find_init()
            if self.init_pid is None:
                time.sleep(0.05)
        # "offline" until PID 1 listens on its private socket, then "starting"
        # until the boot jobs are done ("--wait" waits only for that part).
        state = ""
        while state not in ("running", "degraded"):
            if time.monotonic() > deadline or state in ("maintenance", "stopping"):
                failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
                raise BootFailed(
                    f"systemd in the container is {state!r} after {timeout} s; "
                    f"failed units: {failed.strip()}; console: {self.console_tail()}"
                )
            if state not in ("", "offline"):
                time.sleep(0.1)
            state = self.run(
                "systemctl",
                "is-system-running",
                "--wait",
                check=False,
                timeout=max(1.0, deadline - time.monotonic()),
            ).stdout.strip()
            if state == "offline":
                time.sleep(0.1)

    def _find_init(self) -> int | None:
        """The container's PID 1: the descendant of nspawn whose innermost pid is 1."""
        assert self.nspawn is not None
        todo = [self.nspawn.pid]
        while todo:
            pid = todo.pop()
            for child in _host_children(pid):
                ns = _ns_pid(child)
                if len(ns) >= 2 and ns[-1] == 1:
                    return child
                todo.append(child)
        return None

    def console_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = self.console.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return ""

    # ----------------------------------------------------------------- driving

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside every namespace of the container, as its root."""
        assert self.init_pid is not None, "container not booted"
        environment = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8",
            "SYSTEMD_COLORS": "0",
            "SYSTEMD_PAGER": "",
            "TERM": "dumb",
            **(env or {}),
        }
        done = subprocess.run(
            [_tool("nsenter"), "-t", str(self.init_pid), "-a", "--", "/usr/bin/env", "-i"]
            + [f"{k}={v}" for k, v in environment.items()]
            + list(argv),
            input=input,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-c", script, **kwargs)

    def systemctl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", "--no-ask-password", *args, **kwargs)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show -p …`` as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def write(self, path: str, text: str | bytes, mode: int = 0o644) -> None:
        """Put a file into the container's tree (as root), parents created 0755."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode() if isinstance(text, str) else text
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(mode)
        os.replace(tmp, target)

    # ----------------------------------------------------------------- journal

    def cursor(self) -> str:
        """The journal's current end, to read only what comes after it."""
        out = self.run("journalctl", "--no-pager", "-n", "1", "-o", "json").stdout.strip()
        return str(json.loads(out.splitlines()[-1])["__CURSOR"]) if out else ""

    def journal(self, after: str = "", **fields: str) -> list[JournalEntry]:
        """Journal entries (``-o json``) after the cursor whose ``fields`` all match.

        The matching is done here: journalctl 252 combines ``--after-cursor=`` with
        a match (``-u``, ``FIELD=value``) wrongly and returns nothing when the
        cursor's own entry does not match.
        """
        args = ["journalctl", "--no-pager", "-o", "json"]
        if after:
            args.append(f"--after-cursor={after}")
        out = self.run(*args).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if all(e.get(k) == v for k, v in fields.items())]

    def events(self, unit: str, after: str = "") -> list[dict[str, Any]]:
        """The daemon's own JSON lines in ``unit``'s journal (systemd's messages left out)."""
        found: list[dict[str, Any]] = []
        for entry in self.journal(after, _SYSTEMD_UNIT=unit):
            message = entry.get("MESSAGE")
            if isinstance(message, str) and message.startswith("{"):
                event = json.loads(message)
                event["_pid"] = int(entry["_PID"])
                found.append(event)
        return found

    def wait_for(
        self,
        what: str,
        check: Callable[[], Any],
        timeout: float = 30.0,
        interval: float = 0.2,
    ) -> Any:
        """Poll ``check()`` until it returns something truthy (the container is another
        machine: its journal and unit states have no event to await from here)."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)

    def wait_event(
        self,
        unit: str,
        name: str,
        after: str = "",
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        """The first ``name`` event in ``unit``'s journal after the cursor that ``where`` likes."""

        def find() -> dict[str, Any] | None:
            for event in self.events(unit, after):
                if event.get("event") == name and where(event):
                    return event
            return None

        found: dict[str, Any] = self.wait_for(f"{name} from {unit}", find, timeout)
        return found

    # ---------------------------------------------------------------- teardown

    def close(self) -> None:
        """Power off, then kill what is left, unmount and remove the temp dir."""
        if self._closed:
            return
        self._closed = True
        if self.nspawn is not None and self.nspawn.poll() is None:
            if self.init_pid is not None:
                with contextlib.suppress(Exception):
                    # SIGRTMIN+14: systemd powers off at once, without stopping units one
                    # by one (a throwaway machine; no bus needed).
                    os.kill(self.init_pid, signal.SIGRTMIN + 14)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(timeout=20)
            if self.nspawn.poll() is None:
                # Killing the container's PID 1 ends every process in its namespace.
                if self.init_pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.init_pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    self.nspawn.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.nspawn.wait(timeout=10)
        if self.overlay:
            self._umount(self.root)
        if self.tmpfs is not None:
            self._umount(self.tmpfs)
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (the container shares the network)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def lines(entries: Iterable[JournalEntry]) -> list[str]:
    """The MESSAGE of each entry as text (journalctl -o cat)."""
    out = []
    for e in entries:
        m = e.get("MESSAGE")
        out.append(m if isinstance(m, str) else bytes(m or []).decode(errors="replace"))
    return out
