"""Turning a saga object into what a worker needs: done once per class (the
class, with dill) and once per saga (its state, with plain pickle).

Used by :class:`supervisor.Supervisor` and :class:`supervisor.SagaClient`, in
the caller's thread, so that a saga that cannot be shipped fails at
``spawn()`` with :class:`SpawnError`, never later in a worker.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import Any

import dill

from supervisor.errors import SpawnError
from supervisor.saga import Saga

STATE_DICT, STATE_DILL = 0, 1
_OBJECT_GETSTATE = getattr(object, "__getstate__", None)


@dataclass(frozen=True, slots=True)
class Shipped:
    cls: type
    state: tuple[int, bytes]
    name: str
    timeout: float
    snapshot_json: str
    listens: frozenset[str]
    has_comp: bool


def encode_saga(saga: Any) -> Shipped:
    if not isinstance(saga, Saga):
        raise SpawnError(f"spawn() takes a Saga instance, got {type(saga).__name__}: "
                         f"{saga!r:.100}")
    cls = type(saga)
    name = getattr(saga, "name", "") or cls.__name__
    if not isinstance(name, str):
        raise SpawnError(f"saga name must be a str, got {type(name).__name__}: {name!r}")
    timeout = getattr(saga, "timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise SpawnError(f"saga {name!r}: timeout must be a positive number, got {timeout!r}")
    try:
        snapshot_json = json.dumps(saga.input_snapshot(), separators=(",", ":"))
    except Exception as exc:
        raise SpawnError(f"saga {name!r}: input_snapshot() failed or is not JSON: "
                         f"{type(exc).__name__}: {exc}") from exc
    plain = (hasattr(saga, "__dict__") and not hasattr(cls, "__slots__")
             and getattr(cls, "__getstate__", None) is _OBJECT_GETSTATE
             and cls.__reduce_ex__ is object.__reduce_ex__)
    state: tuple[int, bytes]
    try:
        if not plain:
            raise TypeError("custom pickling: ship the whole object with dill")
        state = (STATE_DICT, pickle.dumps(saga.__dict__, protocol=5))
    except Exception as exc:
        try:
            state = (STATE_DILL, dill.dumps(saga, recurse=True))
        except Exception:
            raise SpawnError(f"saga {name!r} cannot be pickled for a worker: "
                             f"{type(exc).__name__}: {exc}") from exc
    return Shipped(cls, state, name, float(timeout), snapshot_json,
                   frozenset(cls.listens_to), cls.compensate is not Saga.compensate)


def dump_class(cls: type) -> bytes:
    try:
        return bytes(dill.dumps(cls, recurse=True))
    except Exception as exc:
        raise SpawnError(f"saga class {cls.__qualname__} cannot be pickled for a worker: "
                         f"{type(exc).__name__}: {exc}") from exc
