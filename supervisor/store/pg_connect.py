"""Connecting to PostgreSQL: the driver (the ``postgres`` extra), a URL
told from others and shown without its password, and a connection or an
error that names what to fix."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from supervisor.errors import LogError, SupervisorError


def is_url(log: object) -> bool:
    return isinstance(log, str) and log.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for messages, health and metrics."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise SupervisorError("a PostgreSQL log needs psycopg 3: install the 'postgres' extra "
                              "(pip install 'saga-supervisor[postgres]')") from None
    return psycopg


def network(give_up: float) -> dict[str, Any]:
    """libpq's options for a peer that goes silent (a cut cable, a partition,
    a frozen server): data unacknowledged for `give_up` seconds, or a
    connection idle and unanswered for a few seconds, fails the call instead
    of hanging it for the kernel's many minutes."""
    return {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1,
            "keepalives_count": 3, "tcp_user_timeout": max(1000, int(give_up * 1000))}


def server_gives_up(conn: Any, seconds: float, *extra: str) -> None:
    """The server's side of :func:`network`, for this session: a
    transaction of ours left idle (we were paused) or stuck sending to us
    (we were cut off) is ended by the server within `seconds`, so that its
    locks hold up no other node for long (without this, a backend blocked
    in a send to a partitioned node keeps its row locks for the kernel's
    many minutes).  `extra` names more timeouts set the same (``lock_timeout``)."""
    ms = f"{max(100, int(seconds * 1000))}ms"
    for name in ("idle_in_transaction_session_timeout", "tcp_user_timeout", *extra):
        conn.execute("SELECT set_config(%s, %s, false)", (name, ms))
    for name, value in (("tcp_keepalives_idle", "5"), ("tcp_keepalives_interval", "1"),
                        ("tcp_keepalives_count", "3")):
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def server(conn: Any) -> dict[str, Any]:
    """Which server `conn` reached (never the password), for health."""
    info = conn.info
    v = int(info.server_version)
    return {"server_version": f"{v // 10000}.{v % 10000}", "host": info.host,
            "port": info.port, "database": info.dbname, "user": info.user}


def connect(url: str, give_up: float = 10.0) -> Any:
    """A connection, or a LogError that names what to fix (never the password)."""
    psycopg = driver()
    try:
        return psycopg.connect(url, autocommit=False, connect_timeout=10, **network(give_up))
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "password" in text.lower() or "authentication" in text.lower():
            hint = "the server refused the credentials: check the user and password"
        elif "does not exist" in text:
            hint = "create the database (createdb) or fix the URL's database name"
        else:
            hint = "is the server running, and are the host and port right?"
        raise LogError(redact(url), f"cannot connect: {text.replace(url, redact(url))}; "
                                    f"{hint}") from None
