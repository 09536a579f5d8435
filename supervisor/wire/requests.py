"""The control socket's vocabulary: every request a client sends, as one
named, typed record, and the protocol version both ends speak.

A request travels as a pickled plain tuple, ``(op, req, *fields)``: its
record's op name, the request number (0: answered only if refused), then the
record's fields in order, so that pickling carries no class reference.
:func:`encode` builds it from a record; :func:`decode` reads it back into its
record and checks every field by name, once, for every server.  The clients
(:mod:`supervisor.clients`) send these records and the control server
(:mod:`supervisor._engine.control`) decodes them; nothing reads a request by
index.

The supervisor's messages back are plain tuples too: ``("ok", req, value)``,
``("err", req, (error name, message))``, ``("refused", saga_id, (error
name, message))`` for a pipelined spawn, ``("logged", n)`` (the first `n`
spawn requests of this connection are in the log), ``("outcomes",
[(saga_id, state, reason), ...])`` (pushed for the sagas the client spawned),
``("event", kind, data, saga_id, step, version)`` and ``("closing", why)``.
A pipelined spawn (request number 0) is answered only when refused.
"""

from __future__ import annotations

import json
import math
import pickle
from typing import Any, NamedTuple

import supervisor.common.checks as _checks
from supervisor.common.jsontext import is_one_json_value
from supervisor.protocol import STATE_DICT, STATE_DILL
from supervisor.wire.codec import new_record

# 2: "hello" and "logged"; 3: a spawn's fields are one item, as in
# spawn_many; 4: "publish" carries the event's saga id and step; 5: a
# spawn_many too large for one frame comes in parts ("more"); "subscribe"
# may name a held subscription ("early": a field more, old clients send none).  A client
# says its version first; a server that speaks another refuses it by name
PROTOCOL = 5


class BadRequest(Exception):
    """A request or one of its fields is missing or of the wrong type or value."""


class SpawnItem(NamedTuple):
    """One saga to start: its id (taken from shared memory by the client),
    its class (the id this connection shipped it under), its encoded state,
    name, timeout, input snapshot (JSON), the event kinds it listens to,
    whether it compensates, and its idempotency key."""

    saga_id: int
    class_id: int
    state: tuple[int, bytes]
    name: str
    timeout: float
    snapshot: str
    listens: list[str]
    has_comp: bool
    key: str | None = None


class Hello(NamedTuple):
    req: int
    version: int


class ShipClass(NamedTuple):
    """A saga class, dill'ed, known on this connection as `class_id` from now."""

    req: int
    class_id: int
    blob: bytes


class Spawn(NamedTuple):
    """One saga; `watch`: push its outcome to this connection."""

    req: int
    item: SpawnItem
    watch: bool = False


class SpawnBatch(NamedTuple):
    """Many sagas, all or none; `watch`: push their outcomes.  A batch may
    come in parts with the same `req`, each but the last saying `more`: the
    supervisor takes them as one batch with the last.  A last part that says
    `abort` (the client could not encode the rest) drops the parts before
    it, unanswered."""

    req: int
    items: list[SpawnItem]
    watch: bool = False
    more: bool = False
    abort: bool = False


class Cancel(NamedTuple):
    req: int
    saga_id: int
    reason: str


class Wait(NamedTuple):
    req: int
    saga_id: int


class Publish(NamedTuple):
    req: int
    kind: str
    data: Any = None
    saga_id: int | None = None
    step: int | None = None


class Subscribe(NamedTuple):
    """Bus events from now on; with `early`, also those the supervisor
    process held since its start for its launcher's subscription number
    `early`, made before ``start()`` (``engine="process"``)."""

    req: int
    early: int | None = None


class Sync(NamedTuple):
    """Answered once every request sent before it is in the log."""

    req: int


class Register(NamedTuple):
    """A kind, handler or trigger registration record, dill'ed."""

    req: int
    blob: bytes


class Health(NamedTuple):
    req: int


class Metrics(NamedTuple):
    req: int


class ClockMoved(NamedTuple):
    """A launcher's test clock moved to `offset` (its mirror follows)."""

    req: int
    offset: float


Request = (Hello | ShipClass | Spawn | SpawnBatch | Cancel | Wait | Publish | Subscribe | Sync
           | Register | Health | Metrics | ClockMoved)

OPS: dict[str, type[Any]] = {
    "hello": Hello, "cls": ShipClass, "spawn": Spawn, "spawn_many": SpawnBatch,
    "cancel": Cancel, "wait": Wait, "publish": Publish, "subscribe": Subscribe,
    "sync": Sync, "register": Register, "health": Health, "metrics": Metrics,
    "clock": ClockMoved}
OP_OF: dict[type[Any], str] = {cls: op for op, cls in OPS.items()}
SPAWN_OPS = ("spawn", "spawn_many")


def encode(rec: Request) -> bytes:
    """`rec` as the bytes of one request frame's body."""
    if isinstance(rec, Spawn):  # (plain tuples on the wire: no class reference)
        return pickle.dumps(("spawn", rec.req, tuple(rec.item), rec.watch), protocol=5)
    if isinstance(rec, SpawnBatch):
        return pickle.dumps(("spawn_many", rec.req, [tuple(i) for i in rec.items], rec.watch,
                             rec.more, rec.abort), protocol=5)
    return pickle.dumps((OP_OF[type(rec)], *rec), protocol=5)


def batch_frames(rec: SpawnBatch, limit: int) -> list[tuple[SpawnBatch, bytes]]:
    """`rec` as the requests that carry it, each with its encoded body: one,
    or parts of it whose bodies fit in `limit` bytes (all but the last say
    `more`).  One saga too large for a frame stays a part of one, over the
    limit, for the sender to refuse."""
    body = encode(rec)
    if len(body) <= limit or len(rec.items) == 1:
        return [(rec, body)]
    items = rec.items
    size = math.ceil(len(items) / max(2, math.ceil(len(body) / (limit * 0.75))))
    out: list[tuple[SpawnBatch, bytes]] = []
    for k in range(0, len(items), size):
        out += batch_frames(rec._replace(items=items[k:k + size], more=True), limit)
    last, _ = out[-1]
    out[-1] = (last._replace(more=rec.more), encode(last._replace(more=rec.more)))
    return out


# -- reading one back, checked ------------------------------------------------------------

def _int(v: object, what: str, least: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{what} must be an int, got {type(v).__name__}")
    if least is not None and v < least:
        raise BadRequest(f"{what} must be >= {least}, got {v}")
    return v


def _of(v: object, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(v, kind):
        raise BadRequest(f"{what} has type {type(v).__name__}")
    return v


def _check_json(text: str) -> None:
    if is_one_json_value(text):  # (a quarter of json.loads's cost: one a saga, on the loop)
        return
    try:  # the slow path says what is wrong (or takes what json.loads takes)
        json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"snapshot is not JSON: {exc}") from None


_STATES = (STATE_DICT, STATE_DILL)
_SEQS = (tuple, list)  # (SagaClient sends no listens as ())
_INF = float("inf")


def check_item(it: SpawnItem) -> SpawnItem:
    """A spawn item's fields, checked (each rule once, for both spawn requests)."""
    sid, cid, state, name, t, snapshot, listens, has_comp, key = it
    # what a client of ours sends, passed in one expression: a narrower
    # filter than the rules below (exact types, no listens, no key), which
    # judge everything else; the loop decodes every spawn of the process
    # engine, and this is a third of what checking one costs
    if type(sid) is int and sid >= 1 and type(cid) is int and type(state) is tuple and \
            len(state) == 2 and state[0] in _STATES and type(state[1]) is bytes and \
            type(name) is str and type(t) is float and 0 < t < _INF and \
            type(snapshot) is str and not listens and type(listens) in _SEQS and \
            type(has_comp) is bool and key is None:
        _check_json(snapshot)
        return it
    _int(it.saga_id, "saga id", 1)
    _int(it.class_id, "class id")
    state = _of(it.state, tuple, "state")
    if len(state) != 2 or state[0] not in (STATE_DICT, STATE_DILL) or \
            not isinstance(state[1], bytes):
        raise BadRequest("state must be (kind, bytes)")
    _of(it.name, str, "name")
    t = it.timeout
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise BadRequest(f"timeout must be a positive finite number, got {t!r}")
    _check_json(_of(it.snapshot, str, "snapshot"))
    listens = _of(it.listens, (list, tuple, set, frozenset), "listens")
    if listens and not all(isinstance(k, str) for k in listens):
        raise BadRequest("listens must hold str event kinds")
    _of(it.has_comp, bool, "has_comp")
    if it.key is not None:
        _client_rule(_checks.key, it.key)
    return it


def _client_rule(rule: Any, *values: object) -> None:
    """One of the clients' own checks (:mod:`supervisor.common.checks`), on
    what a client sent: what it refuses is a :class:`BadRequest`."""
    try:
        rule(*values)
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from None


def _publish(r: Publish) -> None:
    _of(r.kind, str, "kind")
    _client_rule(_checks.event_ids, r.saga_id, r.step)


def _item(value: object) -> SpawnItem:
    fields: tuple[Any, ...] = _of(value, tuple, "a spawn item")
    n = len(fields)
    if n == 8:
        fields += (None,)
    elif n != 9:
        raise BadRequest(f"a spawn item has 8 or 9 fields, got {n}")
    return check_item(new_record(SpawnItem, fields))


_CHECKS: dict[type[Any], Any] = {
    Hello: lambda r: _int(r.version, "version"),
    ShipClass: lambda r: (_int(r.class_id, "class id"), _of(r.blob, bytes, "blob")),
    Spawn: lambda r: _of(r.watch, bool, "watch"),
    SpawnBatch: lambda r: (_of(r.watch, bool, "watch"), _of(r.more, bool, "more"),
                           _of(r.abort, bool, "abort")),
    Cancel: lambda r: (_int(r.saga_id, "saga id", 1), _of(r.reason, str, "reason")),
    Wait: lambda r: _int(r.saga_id, "saga id", 1),
    Publish: _publish,
    Register: lambda r: _of(r.blob, bytes, "blob"),
    Subscribe: lambda r: r.early is None or _int(r.early, "early", 0),
    ClockMoved: lambda r: _of(r.offset, (int, float), "offset"),
}


def decode(msg: tuple[Any, ...]) -> Request:
    """A request tuple (``(op, req, ...)``, already known to start with a str
    and an int) as its record, every field checked; :class:`BadRequest` names
    what is wrong."""
    if msg[0] == "spawn" and len(msg) == 4 and type(msg[3]) is bool:
        return Spawn(msg[1], _item(msg[2]), msg[3])  # (what a client of ours sends)
    cls = OPS.get(msg[0])
    if cls is None:
        raise BadRequest(f"unknown request {msg[0]!r}")
    fields = msg[1:]
    least = len(cls._fields) - len(cls._field_defaults)
    if not least <= len(fields) <= len(cls._fields):
        raise BadRequest(f"{msg[0]} takes {least} to {len(cls._fields)} fields "
                         f"({', '.join(cls._fields)}), got {len(fields)}")
    if cls is Spawn:  # (its item checked as it is made: no _replace, a copy per field)
        rec: Any = Spawn(fields[0], _item(fields[1]), *fields[2:])
    elif cls is SpawnBatch:
        rec = SpawnBatch(fields[0], [_item(it) for it in _of(fields[1], list, "items")],
                         *fields[2:])
    else:
        rec = cls(*fields)
    check = _CHECKS.get(cls)
    if check is not None:
        check(rec)
    return rec  # type: ignore[no-any-return]
