"""The control socket's requests, checked field by field: what a client may
send, and the two ways a request is turned down.  Loop thread only."""

from __future__ import annotations

import json
import math
from typing import Any

import supervisor._validate as _validate
from supervisor._codec import SagaSpec
from supervisor.protocol import STATE_DICT, STATE_DILL


class BadRequest(Exception):
    """A request field is missing or of the wrong type or value."""


class Refused(Exception):
    """A well-formed request that cannot be done (answered as `kind`)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message
        super().__init__(message)


def field(msg: tuple[Any, ...], i: int, kind: type | tuple[type, ...]) -> Any:
    if len(msg) <= i:
        raise BadRequest(f"field {i} is missing")
    v = msg[i]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise BadRequest(f"field {i} has type {type(v).__name__}")
    return v


def saga_id(msg: tuple[Any, ...], i: int) -> int:
    sid: int = field(msg, i, int)
    if sid <= 0:
        raise BadRequest(f"saga id must be >= 1, got {sid}")
    return sid


def parse_spawn(msg: tuple[Any, ...], classes: dict[int, int | str]
                ) -> tuple[int, SagaSpec, str | None]:
    """``("spawn", req, saga_id, class_id, (state_kind, bytes), name, timeout,
    snapshot_json, listens, has_comp[, key[, watch]])`` as (saga id, spec,
    key); `classes` maps the connection's class ids to the registry's (or to
    why the class could not be loaded)."""
    sid = saga_id(msg, 2)
    ccid = field(msg, 3, int)
    state = field(msg, 4, tuple)
    if len(state) != 2 or state[0] not in (STATE_DICT, STATE_DILL) or \
            not isinstance(state[1], bytes):
        raise BadRequest("state must be (kind, bytes)")
    name = field(msg, 5, str)
    timeout = field(msg, 6, (int, float))
    if isinstance(timeout, bool) or not math.isfinite(timeout) or timeout <= 0:
        raise BadRequest(f"timeout must be a positive finite number, got {timeout!r}")
    snapshot_json = field(msg, 7, str)
    try:
        json.loads(snapshot_json)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"snapshot is not JSON: {exc}") from None
    listens = field(msg, 8, (list, tuple, set, frozenset))
    if not all(isinstance(k, str) for k in listens):
        raise BadRequest("listens must hold str event kinds")
    has_comp = field(msg, 9, bool)
    key = msg[10] if len(msg) > 10 else None
    if key is not None:
        try:
            key = _validate.key(key)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    cid = classes.get(ccid)
    if not isinstance(cid, int):
        raise Refused("SpawnError", cid or f"unknown class id {ccid!r}")
    return sid, SagaSpec(cid, state, name, float(timeout), snapshot_json,
                         frozenset(listens), has_comp), key
