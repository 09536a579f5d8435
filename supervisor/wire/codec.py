"""Turning a saga object into what a worker needs: the class once (with dill),
each saga's state once (with plain pickle where it can), and the registry
that numbers classes.

Used by :class:`supervisor.Supervisor` and :class:`supervisor.SagaClient`, in
the caller's thread, so that a saga that cannot be shipped fails at
``spawn()`` with :class:`SpawnError`, never later in a worker.  This is on the
spawn path: facts about a class are computed once and cached.
"""

from __future__ import annotations

import json
import json.encoder
import pickle
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import dill

from supervisor.common.checks import name_text
from supervisor.errors import SpawnError
from supervisor.frames import MAX_PAYLOAD
from supervisor.protocol import STATE_DICT, STATE_DILL
from supervisor.saga import Saga

_OBJECT_GETSTATE = getattr(object, "__getstate__", None)
_OBJECT_REDUCE_EX = getattr(object, "__reduce_ex__", None)


def _not_json(o: object) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _compact_json_factory() -> Callable[[Any], str]:
    """JSON without spaces, from one C encoder built once.  json.dumps builds a
    new encoder on every call: 1.7 us for a two-key dict here, against 0.6 us.
    Without the circular-reference check (markers=None) a cycle ends in
    RecursionError, which callers treat like any unencodable value."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has the C encoder
        return json.JSONEncoder(separators=(",", ":")).encode
    enc = make(None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",",
               False, False, True)
    join = "".join
    return lambda obj: join(enc(obj, 0))


compact_json = _compact_json_factory()


class SagaSpec(NamedTuple):
    """A saga encoded for a worker: its class by number (the engine's
    registry id; 0 where it is not numbered yet, as a client encodes it
    before the class has its connection's number), the rest by value."""

    class_id: int
    state: tuple[int, bytes]
    name: str
    timeout: float
    snapshot_json: str
    listens: frozenset[str]
    has_comp: bool


class _ClassFacts(NamedTuple):
    plain: bool  # instances pickle as their __dict__
    listens: frozenset[str]
    has_comp: bool


_facts: dict[type, _ClassFacts] = {}


def class_facts(cls: type) -> _ClassFacts:
    facts = _facts.get(cls)
    if facts is None:
        plain = (not hasattr(cls, "__slots__")
                 and getattr(cls, "__getstate__", None) is _OBJECT_GETSTATE
                 and getattr(cls, "__reduce_ex__", None) is _OBJECT_REDUCE_EX)
        facts = _ClassFacts(plain, frozenset(getattr(cls, "listens_to", ())),
                            getattr(cls, "compensate", None) is not Saga.compensate)
        _facts[cls] = facts
    return facts


# builds a NamedTuple from a tuple of its fields at half the cost of calling
# it (~190 against ~320 ns): for the records made once per saga
new_record = tuple.__new__


def encode_saga(saga: Any) -> tuple[type, SagaSpec]:
    """Encode `saga` for shipping: its class, and its spec with no class
    number yet (raises :class:`SpawnError`)."""
    cls, *rest = _encode(saga)
    return cls, new_record(SagaSpec, (0, *rest))


def _encode(saga: Any) -> tuple[type, tuple[int, bytes], str, float, str, frozenset[str], bool]:
    if not isinstance(saga, Saga):
        raise SpawnError(f"spawn() takes a Saga instance, got {type(saga).__name__}: "
                         f"{saga!r:.100}")
    cls = type(saga)
    facts = _facts.get(cls) or class_facts(cls)
    name = saga.name or cls.__name__
    if type(name) is not str:
        raise SpawnError(f"saga name must be a str, got {type(name).__name__}: {name!r}")
    try:
        name_text(name, "saga name")
    except ValueError as exc:
        raise SpawnError(str(exc)) from None
    timeout = saga.timeout
    if type(timeout) is not float:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise SpawnError(f"saga {name!r}: timeout must be a positive number, "
                             f"got {timeout!r}")
        timeout = float(timeout)
    if not 0 < timeout < float("inf"):
        raise SpawnError(f"saga {name!r}: timeout must be a positive finite number, "
                         f"got {timeout!r}")
    try:
        snapshot_json = compact_json(saga.input_snapshot())
    except Exception as exc:
        raise SpawnError(f"saga {name!r}: input_snapshot() failed or is not JSON: "
                         f"{type(exc).__name__}: {exc}") from exc
    state: tuple[int, bytes]
    try:
        if not facts.plain:
            raise TypeError("custom pickling: ship the whole object with dill")
        state = (STATE_DICT, pickle.dumps(saga.__dict__, protocol=5))
    except Exception as exc:
        try:
            state = (STATE_DILL, dill.dumps(saga, recurse=True))
        except Exception:
            raise SpawnError(f"saga {name!r} cannot be pickled for a worker: "
                             f"{type(exc).__name__}: {exc}") from exc
    size = len(state[1]) + len(snapshot_json)
    if size > MAX_PAYLOAD:  # the same limit on both engines and every client
        raise SpawnError(f"saga {name!r}: its state and input snapshot are {size:,} bytes "
                         f"encoded, over the {MAX_PAYLOAD:,} a spawn carries")
    return (cls, state, name, timeout, snapshot_json, facts.listens, facts.has_comp)


def dump_class(cls: type) -> bytes:
    try:
        return bytes(dill.dumps(cls, recurse=True))
    except Exception as exc:
        raise SpawnError(f"saga class {cls.__qualname__} cannot be pickled for a worker: "
                         f"{type(exc).__name__}: {exc}") from exc


class ClassRegistry:
    """Numbers saga classes (1, 2, ...) and keeps each one's dill blob, for
    shipping to workers.  Thread-safe: ``spawn()`` runs on any thread, the
    control socket registers classes sent by clients."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[type, int] = {}
        self._blobs: dict[int, bytes] = {}

    def register(self, cls: type, blob: bytes | None = None) -> int:
        with self._lock:
            cid = self._ids.get(cls)
            if cid is not None:
                return cid
            if blob is None:
                blob = dump_class(cls)
            cid = len(self._blobs) + 1
            self._blobs[cid] = blob
            self._ids[cls] = cid
            return cid

    def blob(self, class_id: int) -> bytes:
        return self._blobs[class_id]

    def prepare(self, saga: Any) -> SagaSpec:
        """Encode `saga` for a worker (raises :class:`SpawnError`)."""
        cls, *rest = _encode(saga)
        cid = self._ids.get(cls)
        if cid is None:
            cid = self.register(cls)
        return new_record(SagaSpec, (cid, *rest))
