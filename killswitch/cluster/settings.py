"""``[cluster]`` as one desk runs it: its subjects, its desk name, its credentials, TLS.

Subjects (``P`` = ``subject_prefix``): ``P.<firm>.trigger`` (every desk),
``P.<firm>.<desk>.trigger`` (this desk), ``P.<firm>.<desk>.events`` and
``P.<firm>.status``.  The desk name comes from ``cluster.desk``, else
``$KILLSWITCH_DESK`` (the systemd template unit), else the host name; the
credentials are a NATS ``.creds`` file's content or a user nkey seed, read like
the API secret.  Nothing here imports nats-py before a connection is made.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from killswitch.config.load import SUBJECT_TOKEN
from killswitch.config.model import ClusterConfig
from killswitch.config.reader import ConfigError
from killswitch.exchange.credentials import Secret, read_secret

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = [
    "DESK_ENV",
    "ClusterSettings",
    "InsecureConnection",
    "Subjects",
    "connect_options",
    "is_tls",
    "resolve_cluster",
    "server_label",
    "wants_tls",
]

DESK_ENV = "KILLSWITCH_DESK"  # the systemd template unit sets it to the instance name (%i)


@dataclass(frozen=True)
class Subjects:
    firm_trigger: str
    desk_trigger: str
    events: str
    status: str

    @classmethod
    def of(cls, config: ClusterConfig, desk: str) -> Subjects:
        base = f"{config.subject_prefix}.{config.firm}"
        return cls(
            f"{base}.trigger", f"{base}.{desk}.trigger", f"{base}.{desk}.events", f"{base}.status"
        )


@dataclass(frozen=True)
class ClusterSettings:
    """``[cluster]`` with what is resolved at start: the desk name, the host, the credentials."""

    config: ClusterConfig
    desk: str
    host: str
    credentials: Secret | None

    @property
    def subjects(self) -> Subjects:
        return Subjects.of(self.config, self.desk)

    @property
    def origin(self) -> str:
        return f"{self.desk}@{self.host}"


def _credential_kind(secret: Secret) -> str:
    text = secret.reveal()
    if "-----BEGIN NATS USER JWT-----" in text and "BEGIN USER NKEY SEED" in text:
        return "creds"
    if text.startswith("SU") and len(text) == 58 and text.isalnum():
        return "seed"
    looks_like_path = text.strip().startswith(("/", "~", "./")) and "\n" not in text.strip()
    raise ConfigError(
        "cluster.credentials_env",
        "expected the content of a NATS .creds file or a user nkey seed (SU...)"
        + ("; it holds a path: put the file's content in it instead" if looks_like_path else ""),
    )


def resolve_cluster(
    config: ClusterConfig | None, environ: Mapping[str, str] | None = None
) -> ClusterSettings | None:
    """The desk name (config, else ``$KILLSWITCH_DESK``, else the host name) and credentials."""
    if config is None:
        return None
    env = os.environ if environ is None else environ
    host = socket.gethostname()
    desk = config.desk or env.get(DESK_ENV) or host.split(".", 1)[0]
    if not SUBJECT_TOKEN.fullmatch(desk):
        raise ConfigError(
            "cluster.desk", f"{desk!r} is not a usable desk name: set cluster.desk ([A-Za-z0-9_-])"
        )
    credentials = None
    if config.credentials_env is not None:
        credentials = read_secret(config.credentials_env, "cluster.credentials_env", env)
        _credential_kind(credentials)
    return ClusterSettings(config=config, desk=desk, host=host, credentials=credentials)


def connect_options(settings: ClusterSettings) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` carrying the credentials, if any."""
    if settings.credentials is None:
        return {}
    if _credential_kind(settings.credentials) == "seed":
        return {"nkeys_seed_str": settings.credentials.reveal()}
    from nats.aio.client import RawCredentials

    return {"user_credentials": RawCredentials(settings.credentials.reveal())}


def wants_tls(config: ClusterConfig) -> bool:
    return any(url.startswith("tls://") for url in config.servers)


def is_tls(nc: NatsClient) -> bool:
    """Whether the connection runs over TLS.

    nats-py upgrades to TLS only when the server's INFO asks for it, so a tls://
    URL alone does not guarantee it (a server or a man in the middle could say
    no); and it has no public way to ask.  This reads its transport's stream
    writer: should that internal change, the answer is False and a tls:// cluster
    refuses to connect (local kills are unaffected), which the tests would show.
    """
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    return writer is not None and writer.get_extra_info("ssl_object") is not None


class InsecureConnection(ConnectionError):
    """tls:// was configured and the connection is not encrypted."""


def server_label(url: object) -> str | None:
    """``scheme://host:port`` of a parsed URL, never its user information."""
    scheme, host, port = (getattr(url, a, None) for a in ("scheme", "hostname", "port"))
    return None if host is None else f"{scheme}://{host}:{port}"
