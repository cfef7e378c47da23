"""The cached Debian root file system: built once per machine with debootstrap.

The cache lives in ``/var/cache/killswitch-nspawn/<release>-<hash>/`` where the
hash covers the release, the variant, the package list and the mirror, so a
change to any of them builds a fresh tree.  debootstrap writes into a temporary
directory next to it, which is renamed into place only once the build and its
check succeeded: an interrupted build never leaves a half cache.

``python -m tests.nspawn.rootfs`` builds it ahead of a test run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RELEASE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv")
CACHE_ROOT = Path(os.environ.get("KILLSWITCH_NSPAWN_CACHE", "/var/cache/killswitch-nspawn"))
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# A tree counts as complete only with this marker, written last before the rename.
COMPLETE = ".killswitch-rootfs-complete"


class RootfsUnavailable(Exception):
    """The root file system cannot be built here; the message says why."""


def mirror() -> str:
    """The Debian mirror the host's apt uses (the first ``URIs:`` without -security)."""
    if SOURCES.exists():
        for uri in re.findall(r"^URIs:\s*(\S+)", SOURCES.read_text(encoding="utf-8"), re.M):
            if "security" not in uri:
                return str(uri)
    return FALLBACK_MIRROR


def cache_dir() -> Path:
    """Where the tree for this release, variant, package list and mirror lives."""
    key = "\n".join([RELEASE, VARIANT, *sorted(PACKAGES), mirror()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return CACHE_ROOT / f"{RELEASE}-{digest}"


def ensure_rootfs(log: bool = False) -> Path:
    """The cached tree, building it first if it is missing.  Raises RootfsUnavailable."""
    target = cache_dir()
    if (target / COMPLETE).exists():
        return target
    if os.geteuid() != 0:
        raise RootfsUnavailable("building a root file system with debootstrap needs root")
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if debootstrap is None:
        raise RootfsUnavailable("debootstrap not installed (.ci/run installs it)")
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    # One build at a time on the machine (another test session may be building).
    with (CACHE_ROOT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE).exists():
            return target
        # Leftovers of an interrupted build (their own temp dirs) are removed first.
        for stale in CACHE_ROOT.glob(f".build-{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # a tree without the marker: not ours to trust
            shutil.rmtree(target)
        _build(debootstrap, target, log)
    return target


def _build(debootstrap: str, target: Path, log: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=CACHE_ROOT))
    try:
        argv = [
            debootstrap,
            f"--variant={VARIANT}",
            f"--include={','.join(PACKAGES)}",
            RELEASE,
            str(tmp),
            mirror(),
        ]
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=None if log else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            tail = (done.stdout or "").strip().splitlines()[-5:]
            raise RootfsUnavailable(
                f"debootstrap {RELEASE} from {mirror()} failed ({done.returncode}): "
                + " | ".join(tail)
            )
        for needed in ("usr/lib/systemd/systemd", "usr/bin/python3", "usr/bin/systemctl"):
            if not (tmp / needed).exists():
                raise RootfsUnavailable(f"debootstrap finished but /{needed} is missing")
        (tmp / COMPLETE).write_text(" ".join(argv) + "\n", encoding="utf-8")
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        print(ensure_rootfs(log=True))
    except RootfsUnavailable as exc:
        sys.exit(f"rootfs: {exc}")
