"""Turning a saga object into what a worker needs: done once per class (the
class, with dill) and once per saga (its state, with plain pickle).

Used by :class:`supervisor.Supervisor` and :class:`supervisor.SagaClient`, in
the caller's thread, so that a saga that cannot be shipped fails at
``spawn()`` with :class:`SpawnError`, never later in a worker.  This is on the
spawn path: facts about a class are computed once and cached.
"""

from __future__ import annotations

import json
import json.encoder
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

import dill

from supervisor.errors import SpawnError
from supervisor.saga import Saga

STATE_DICT, STATE_DILL = 0, 1
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


class Shipped(NamedTuple):
    cls: type
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


def _class_facts(cls: type) -> _ClassFacts:
    facts = _facts.get(cls)
    if facts is None:
        plain = (not hasattr(cls, "__slots__")
                 and getattr(cls, "__getstate__", None) is _OBJECT_GETSTATE
                 and getattr(cls, "__reduce_ex__", None) is _OBJECT_REDUCE_EX)
        facts = _ClassFacts(plain, frozenset(getattr(cls, "listens_to", ())),
                            getattr(cls, "compensate", None) is not Saga.compensate)
        _facts[cls] = facts
    return facts


def encode_saga(saga: Any) -> Shipped:
    if not isinstance(saga, Saga):
        raise SpawnError(f"spawn() takes a Saga instance, got {type(saga).__name__}: "
                         f"{saga!r:.100}")
    cls = type(saga)
    facts = _facts.get(cls) or _class_facts(cls)
    name = saga.name or cls.__name__
    if type(name) is not str:
        raise SpawnError(f"saga name must be a str, got {type(name).__name__}: {name!r}")
    timeout = saga.timeout
    if type(timeout) is not float:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise SpawnError(f"saga {name!r}: timeout must be a positive number, "
                             f"got {timeout!r}")
        timeout = float(timeout)
    if not timeout > 0:
        raise SpawnError(f"saga {name!r}: timeout must be a positive number, got {timeout!r}")
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
    return Shipped(cls, state, name, timeout, snapshot_json, facts.listens, facts.has_comp)


def dump_class(cls: type) -> bytes:
    try:
        return bytes(dill.dumps(cls, recurse=True))
    except Exception as exc:
        raise SpawnError(f"saga class {cls.__qualname__} cannot be pickled for a worker: "
                         f"{type(exc).__name__}: {exc}") from exc
