"""The control server's side of a request: a decoded spawn item turned into
the engine's :class:`SagaSpec`, and the two ways a request is turned down
(:class:`BadRequest`, from :mod:`supervisor.wire.requests`, and
:class:`Refused`).  Loop thread only."""

from __future__ import annotations

from supervisor.wire.codec import SagaSpec, new_record
from supervisor.wire.requests import BadRequest, SpawnItem

__all__ = ["BadRequest", "Refused", "spec_of"]


class Refused(Exception):
    """A well-formed request that cannot be done (answered as `kind`)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message
        super().__init__(message)


def spec_of(it: SpawnItem, classes: dict[int, int | str]) -> SagaSpec:
    """A checked spawn item as the engine's spec; `classes` maps the
    connection's class ids to the registry's (or to why the class could not
    be loaded)."""
    cid = classes.get(it.class_id)
    if not isinstance(cid, int):
        raise Refused("SpawnError", cid or f"unknown class id {it.class_id!r}")
    listens = it.listens
    return new_record(SagaSpec, (cid, it.state, it.name, float(it.timeout), it.snapshot,
                                 frozenset(listens) if listens else _NO_KINDS, it.has_comp))


_NO_KINDS: frozenset[str] = frozenset()
