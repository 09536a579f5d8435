"""Argument checks at the public boundary, written once."""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

from supervisor.frames import MAX_PAYLOAD
from supervisor.saga import Event, Saga


def saga_id(value: object) -> int:
    """`value` as a saga id, or ``TypeError``/``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"saga id must be an int, got {type(value).__name__}: {value!r:.80}")
    if value <= 0:
        raise ValueError(f"unknown saga id {value}: ids start at 1")
    return value


def timeout(value: object, what: str = "timeout", allow_none: bool = True) -> float | None:
    """A finite, non-negative number of seconds (or None where allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}: "
                        f"{value!r:.80}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def storable_text(text: str) -> str:
    """`text` as every log can store it: a NUL (PostgreSQL's text refuses it)
    written ``\\x00``, a lone surrogate (no UTF-8 has it) as its ``\\udcXX``
    escape; anything else, the usual case, is `text` itself."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def name_text(value: str, what: str) -> str:
    """A name the log looks sagas up by (a key, a kind, an event's kind): text
    a log stores as it is (see :func:`storable_text`).  Free text (a reason)
    is escaped where it is stored instead."""
    if storable_text(value) != value:
        raise ValueError(f"{what} must be text without NUL or lone surrogates, got {value!r:.80}")
    return value


KEY_MAX = 256  # characters in an idempotency key


def key(value: object) -> str:
    """An idempotency key: a str of 1 to :data:`KEY_MAX` characters.  The
    one rule, for the facade, the clients and the control socket."""
    if not isinstance(value, str) or not 0 < len(value) <= KEY_MAX:
        raise ValueError(f"key must be a str of 1 to {KEY_MAX} characters, got {value!r:.80}")
    return name_text(value, "key")


def positive(value: object, what: str) -> float:
    """A finite number of seconds (or bytes, ...) > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def supervisor_args(workers: object, host: object, host_fds: object, durability: object,
                    start_method: object, rss_limit: object, breaches: object,
                    max_restarts: object, host_protocol: object,
                    capacity: object = 65536) -> None:
    """The checks of ``Supervisor(...)`` that are not a plain number of seconds."""
    from supervisor.shmem.binding import MAX_CAPACITY

    if isinstance(capacity, bool) or not isinstance(capacity, int) or \
            not 1 <= capacity <= MAX_CAPACITY or capacity & (capacity - 1):
        raise ValueError(f"capacity must be a power of two from 1 to {MAX_CAPACITY} "
                         f"(e.g. 65536 or {1 << 17}), got {capacity!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ValueError(f"workers must be an int from 1 to 256, got {workers!r}")
    if host is not None and (not isinstance(host, (list, tuple)) or not host
                             or not all(isinstance(a, str) for a in host)):
        raise TypeError(f"host must be a non-empty list of str (an argv), got {host!r}")
    if host is not None and host_fds is not None:
        raise ValueError("give either host (an argv) or host_fds, not both")
    if durability not in ("normal", "full"):
        raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
    if start_method not in ("spawn", "forkserver", "fork"):
        raise ValueError(f"start_method must be spawn, forkserver or fork, "
                         f"got {start_method!r}")
    if rss_limit is not None and (isinstance(rss_limit, bool)
                                  or not isinstance(rss_limit, int) or rss_limit <= 0):
        raise ValueError(f"rss_limit must be a positive number of bytes, got {rss_limit!r}")
    if isinstance(breaches, bool) or not isinstance(breaches, int) or breaches < 1:
        raise ValueError(f"breaches must be an int >= 1, got {breaches!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
    if host_protocol not in (1, 2) or isinstance(host_protocol, bool):
        raise ValueError(f"host_protocol must be 1 or 2, got {host_protocol!r}")


def node(value: object, log: object, data_dir: object) -> str | None:
    """``node``: a fleet node's name, for a supervisor on a PostgreSQL log
    (default: the host name and the data dir's real path); None without one."""
    if value is None:
        if log is None:
            return None
        import os
        import socket

        return f"{socket.gethostname()}:{os.path.realpath(str(data_dir))}"
    if log is None:
        raise ValueError("node= names a supervisor in a fleet on a PostgreSQL log: give "
                         "log='postgresql://...' too")
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ValueError(f"node must be a non-empty name of at most 200 characters, "
                         f"got {value!r:.200}")
    return value


def log_url(value: object) -> str | None:
    """``log``: None (the SQLite file in the data dir) or a PostgreSQL URL,
    whose driver must be installed (checked now, not at start())."""
    if value is None:
        return None
    from supervisor.store.pg_connect import driver as _driver, is_url, redact

    if not is_url(value):
        shown = redact(value) if isinstance(value, str) else repr(value)
        raise ValueError(f"log must be a postgresql://... URL (or None for the SQLite file "
                         f"in the data dir), got {shown!r:.200}")
    _driver()
    return str(value)


def max_clients(value: object) -> int | None:
    """``max_clients``: None (from the open-files limit), or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_clients must be an int >= 1 (or None), got {value!r}")
    return value


def worker_fill(value: object) -> int:
    """``worker_fill``: an int >= 0 (0: every saga to worker ``id % workers``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"worker_fill must be an int >= 0, got {value!r}")
    return value


def kind_limit(max_in_flight: object, queue_timeout: object
               ) -> tuple[int, float | None] | None:
    """``register_kind``'s (max_in_flight, queue_timeout), or None for no limit."""
    if max_in_flight is None:
        if queue_timeout is not None:
            raise ValueError("queue_timeout needs max_in_flight (without a limit, nothing "
                             "ever waits in a queue)")
        return None
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
        raise TypeError(f"max_in_flight must be an int, got {max_in_flight!r}")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    return max_in_flight, (None if queue_timeout is None
                           else positive(queue_timeout, "queue_timeout"))


def clock_and_port(clock: object, metrics_port: object) -> None:
    if clock is not None and not callable(clock):
        raise TypeError("clock must be a callable returning monotonic seconds "
                        "(e.g. supervisor.testing.Clock())")
    if metrics_port is not None and (isinstance(metrics_port, bool) or not isinstance(
            metrics_port, int) or not 0 <= metrics_port <= 65535):
        raise ValueError(f"metrics_port must be a port number (0: any free one), "
                         f"got {metrics_port!r}")


def sagas(many: Any) -> list[Any]:
    """``spawn_many``'s sagas as a list (each is checked as it is encoded)."""
    try:
        if not isinstance(many, (str, bytes, Saga)):
            return list(many)
    except TypeError:
        pass
    raise TypeError(f"spawn_many() takes an iterable of Saga instances, got "
                    f"{type(many).__name__}")


def event_ids(saga_id: object, step: object) -> None:
    """An event's saga id and step: each an int or None (the control socket
    checks what a client sent by this same rule)."""
    for what, v in (("saga_id", saga_id), ("step", step)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise TypeError(f"event {what} must be an int or None, got {type(v).__name__}")


def event(ev: Any) -> None:
    """An event ``publish()`` can take: refused here, not in the loop."""
    if not isinstance(ev, Event):
        raise TypeError(f"publish() takes an Event, got {type(ev).__name__}")
    if not isinstance(ev.kind, str):
        raise TypeError(f"event kind must be a str, got {type(ev.kind).__name__}")
    if not ev.kind:
        raise ValueError("event kind must not be empty (sagas and triggers match on it)")
    name_text(ev.kind, "event kind")
    event_ids(ev.saga_id, ev.step)
    try:  # it travels to workers and clients pickled
        size = len(pickle.dumps(ev.data, protocol=5))
    except Exception as exc:
        raise TypeError(f"event data must be picklable: {type(exc).__name__}: {exc}"
                        ) from None
    if size > MAX_PAYLOAD:  # the same limit on both engines and every client
        raise ValueError(f"event {ev.kind!r}: its data is {size:,} bytes pickled, over the "
                         f"{MAX_PAYLOAD:,} an event carries")
    try:  # and is logged as JSON where a saga consumes it (repr where not JSON)
        json.dumps(ev.data, default=repr)
    except (ValueError, RecursionError) as exc:
        raise TypeError(f"event data cannot be encoded (does it contain itself?): "
                        f"{type(exc).__name__}: {str(exc)[:200]}") from None


def kind(kind: Any, factory: Any, replay: bool) -> tuple[str, Any]:
    """``register_kind``'s kind as (name, factory); a Saga subclass's
    factory defaults to ``cls(**snapshot)``."""
    if isinstance(kind, type) and issubclass(kind, Saga):
        name = kind.name or kind.__name__
        if factory is None:
            cls = kind
            factory = lambda snap: cls(**snap)  # noqa: E731
    elif isinstance(kind, str):
        name = kind
    else:
        raise TypeError(f"kind must be a Saga subclass or a kind name, got {kind!r}")
    if factory is not None and not callable(factory):
        raise TypeError("factory must be callable: factory(snapshot) -> Saga")
    if replay and factory is None:
        raise ValueError(f"kind {name!r}: replay needs a factory(snapshot) -> Saga")
    return name, factory


def fleet_kind(portable: object, replay: bool, orphan_timeout: object,
               fleet_limit: object, max_in_flight: object) -> tuple[float | None, int | None]:
    """``register_kind``'s fleet options, as (orphan_timeout, fleet_limit): a
    portable kind is taken over by replay and never left to an orphan
    timeout; a fleet limit is a count, and replaces the node's own."""
    orphan = None if orphan_timeout is None else positive(orphan_timeout, "orphan_timeout")
    if not isinstance(portable, bool):
        raise TypeError(f"portable must be True or False, got {portable!r}")
    if portable and not replay:
        raise ValueError("a portable kind is taken over by replay: it needs replay=True")
    if portable and orphan is not None:
        raise ValueError("orphan_timeout is for host-bound kinds; a portable kind's sagas "
                         "on a dead node are taken over instead")
    if fleet_limit is None:
        return orphan, None
    if isinstance(fleet_limit, bool) or not isinstance(fleet_limit, int):
        raise TypeError(f"fleet_limit must be an int, got {fleet_limit!r}")
    if fleet_limit < 1:
        raise ValueError(f"fleet_limit must be >= 1, got {fleet_limit}")
    if max_in_flight is not None:
        raise ValueError("give max_in_flight (this node) or fleet_limit (the fleet), not both")
    return orphan, fleet_limit
