"""The engine's loop-thread core, wired by one constructor: :class:`SagaCore`.

Saga operations (with their per-kind queues), compensation, the group
commit, recovery, idempotency keys, step retries, dispatch and routing,
each given what it needs at construction (no setter afterwards).  The
engine builds it around its worker pool, host and control socket
(:meth:`Engine._start`); the unit tests build the very same core against a
real segment and log, with no worker or host process, and feed it worker
replies and host frames directly.  Loop thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from supervisor._engine.compensation import Compensation
from supervisor._engine.dispatch import Dispatch, Handler
from supervisor._engine.keys import Keys
from supervisor._engine.observations import Observations
from supervisor._engine.group_commit import GroupCommit
from supervisor._engine.queues import Limits, Queues
from supervisor._engine.records import Lifecycle, Stats, Turn, TurnOutputs, WorkerProc
from supervisor._engine.recovery import Kinds, Recovery, Row
from supervisor._engine.retries import Retries
from supervisor._engine.routing import Routing
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable
from supervisor.saga import Saga, Target
from supervisor.shmem.state import SharedState
from supervisor.store.seam import LogStore
from supervisor.wire.codec import SagaSpec


class SagaCore:
    """Every loop-thread part that decides what happens to a saga."""

    def __init__(self, log: LogStore, shared: SharedState, table: SagaTable, turn: Turn,
                 stats: Stats, life: Lifecycle, *,
                 pick_worker: Callable[[int], WorkerProc],
                 ship_class: Callable[[int], None],
                 send_workers: Callable[[], None],
                 emit: Callable[[TurnOutputs], None],
                 kinds: Kinds | None = None,
                 prepare: Callable[[Saga], SagaSpec] | None = None,
                 handlers: dict[Target, Handler] | None = None,
                 limits: Limits | None = None,
                 fleet_limits: dict[str, int] | None = None,
                 unplaced: dict[str, list[Row]] | None = None,
                 observations: Observations | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wake_fd: int = -1, pipeline_rows: int = 0, host_protocol: int = 2,
                 first_queue_seq: int = 1) -> None:
        def admission(sagas: SagaOps) -> Queues:
            return Queues(limits if limits is not None else {}, table, sagas, shared, turn,
                          stats, life, first_queue_seq, fleet_limits)

        self.table = table
        self.turn = turn
        self.sagas = sagas = SagaOps(table, turn, shared, stats, life, pick_worker, ship_class,
                                     observations, clock, admission)
        self.queues: Queues = sagas.queue  # type: ignore[assignment]  # (made just above)
        self.compensation = comp = Compensation(sagas, turn)
        self.group_commit = commits = GroupCommit(log, turn, emit, send_workers, stats, wake_fd,
                                                  pipeline_rows)
        self.recovery = Recovery(kinds if kinds is not None else {}, prepare or _no_prepare,
                                 sagas, comp, table, turn, shared, stats, log,
                                 commits.commit_now, pick_worker, ship_class,
                                 unplaced if unplaced is not None else {})
        self.keys = Keys(table, sagas, commits.commit_now, log.claim_key)
        self.retries = retries = Retries(table, sagas, shared, turn, stats)
        self.dispatch = Dispatch(table, shared, sagas, comp,
                                 handlers if handlers is not None else {}, stats, retries,
                                 host_protocol)
        self.routing = Routing(table, shared, sagas, comp, self.recovery, turn, stats, retries)


def _no_prepare(saga: Any) -> SagaSpec:
    raise TypeError("this core has no class registry: it cannot rebuild sagas")
