"""The rows of one loop turn (:class:`Batch`), which a store writes in one
transaction, and an unfinished saga as a store reads it back: the data that
crosses the store seam (:mod:`supervisor.store.seam`) either way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from supervisor.common.checks import storable_text


# an unfinished saga, as a store's unfinished() gives it: (id, kind, started or
# queued at, input json, state, key)
Unfinished = tuple[int, str, float, str | None, str, str | None]


@dataclass(slots=True)
class Batch:
    """The rows of one loop turn, written in one transaction."""

    sagas: list[tuple[Any, ...]] = field(default_factory=list)
    steps: list[tuple[Any, ...]] = field(default_factory=list)
    step_ends: list[tuple[Any, ...]] = field(default_factory=list)
    step_comps: list[tuple[Any, ...]] = field(default_factory=list)
    saga_states: list[tuple[Any, ...]] = field(default_factory=list)
    saga_ends: list[tuple[Any, ...]] = field(default_factory=list)
    saga_keys: list[tuple[str, int]] = field(default_factory=list)  # (key, saga id)
    # ended attempts: (saga id, step, attempt, started, ended, reason, state)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    step_attempts: list[tuple[int, int, int]] = field(default_factory=list)  # (n, sid, step)
    # sagas put in their kind's queue: (id, name, queued at, input json, seq)
    queued: list[tuple[Any, ...]] = field(default_factory=list)
    dequeued: list[tuple[float, int]] = field(default_factory=list)  # (started at, id)
    id_mark: int = 0  # a new high-water mark for ids (0: none this turn)
    wake_slots: bool = False  # a fleet-limited kind queued or ended: wake the fleet

    def __bool__(self) -> bool:
        return bool(self.sagas or self.steps or self.step_ends or self.step_comps
                    or self.saga_states or self.saga_ends or self.saga_keys
                    or self.attempts or self.step_attempts or self.queued or self.dequeued
                    or self.id_mark)

    def extend(self, later: Batch) -> None:
        """Take a later turn's rows into this batch (one commit for both).
        Each kind of row keeps its turn order, and the kinds are written in
        an order in which a later turn's rows never need to go first (a row
        is inserted before it is updated, a step ends before it is
        compensated, a saga ends last)."""
        for name in _ROW_LISTS:
            getattr(self, name).extend(getattr(later, name))
        self.id_mark = max(self.id_mark, later.id_mark)
        self.wake_slots = self.wake_slots or later.wake_slots

    def storable(self) -> Batch:
        """This batch with every text a log may refuse made storable (see
        :func:`~supervisor.common.checks.storable_text`); itself if it has none.  Only after a commit
        failed on one: free text from user code or a host (a failure's reason,
        a step's name) may hold a lone surrogate (no UTF-8 for it) or, on
        PostgreSQL, a NUL."""
        changed = False
        lists: dict[str, list[tuple[Any, ...]]] = {}
        for name in _ROW_LISTS:
            rows = getattr(self, name)
            new = [tuple(storable_text(v) if type(v) is str else v for v in row)
                   for row in rows]
            changed = changed or new != rows
            lists[name] = new
        if not changed:
            return self
        return Batch(**lists, id_mark=self.id_mark,
                     wake_slots=self.wake_slots)

    def rows(self) -> int:
        return (len(self.sagas) + len(self.steps) + len(self.step_ends) + len(self.step_comps)
                + len(self.saga_states) + len(self.saga_ends) + len(self.saga_keys)
                + len(self.attempts) + len(self.step_attempts) + len(self.queued)
                + len(self.dequeued) + (1 if self.id_mark else 0))


_ROW_LISTS = tuple(f for f in Batch.__dataclass_fields__ if f not in ("id_mark", "wake_slots"))

