"""The engine's parts wired in process, as the loop wires them, against a
real shared segment and a real SQLite log, with no worker or host process:
worker replies and host frames are fed in directly (test_engine_units.py,
test_fuzz.py)."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from supervisor import SharedState
from supervisor._codec import ClassRegistry, SagaSpec
from supervisor._engine.compensation import Compensation
from supervisor._engine.dispatch import Dispatch
from supervisor._engine.pipeline import Pipeline
from supervisor._engine.records import (
    HOST,
    HostProc,
    Lifecycle,
    LiveSaga,
    Stats,
    Turn,
    TurnOutputs,
    WorkerProc,
)
from supervisor._engine.recovery import Recovery
from supervisor._engine.retries import Retries
from supervisor._engine.routing import Routing
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable
from supervisor.frames import T_EVENT, host_frame
from supervisor.log import SagaLog
from supervisor.protocol import STATE_DICT, Act, Op


def answer(sid: int, step: int, kind: int = T_EVENT, payload: bytes = b'{"kind":"echo"}',
           attempt: int = 1) -> bytes:
    """A host frame's body, as the reader yields it."""
    return host_frame(kind, sid, step, payload, attempt)[4:]


class Parts:
    """The engine's parts for one test, wired like Engine._start does."""

    def __init__(self, shared: SharedState, db: Path, pipeline_rows: int = 0) -> None:
        self.shared = shared
        self.log = SagaLog(db)
        self.turn = Turn()
        self.table = SagaTable()
        self.stats = Stats()
        self.life = Lifecycle()
        self.life.state = "running"
        self.worker = WorkerProc(0, None, -1, -1)
        self.host = HostProc(None, -1, -1)
        # the last outputs only: a fuzz run ends 100,000s of turns
        self.emitted: deque[TurnOutputs] = deque(maxlen=64)
        self.turns = 0
        self.sagas = SagaOps(self.table, self.turn, shared, self.stats, self.life,
                             lambda sid: self.worker, lambda cid: None)
        self.comp = Compensation(self.sagas, self.turn)
        self.pipeline = Pipeline(self.log, self.turn, self._emitted,
                                 lambda: [self.worker], self.stats, -1, pipeline_rows)
        self.recovery = Recovery({}, ClassRegistry().prepare, self.sagas, self.comp,
                                 self.table, self.turn, shared, self.stats, self.log,
                                 self.pipeline.commit_now, lambda sid: self.worker,
                                 lambda cid: None, {})
        self.retries = Retries(self.table, self.sagas, shared, self.turn, self.stats)
        self.routing = Routing(self.table, shared, self.sagas, self.comp, self.recovery,
                               self.turn, self.stats, self.retries)
        self.dispatch = Dispatch(self.table, shared, self.sagas, self.comp, {}, self.stats,
                                 self.retries)

    def _emitted(self, out: TurnOutputs) -> None:
        self.emitted.append(out)
        self.turns += 1

    def spawn(self, timeout: float = 10.0, has_comp: bool = False) -> LiveSaga:
        sid = self.shared.acquire()
        self.sagas.start(sid, SagaSpec(1, (STATE_DICT, b""), "kind", timeout, "{}",
                                       frozenset(), has_comp))
        saga = self.table.get(sid)
        assert saga is not None
        return saga

    def issue(self, saga: LiveSaga, cmd: dict[str, Any], consumed: str | None = None) -> None:
        """What a worker reports when its saga returns IssueCmd(HOST, cmd)."""
        self.routing.worker_replies([(Op.ACT, saga.saga_id, Act.CMD,
                                      (HOST, json.dumps(cmd), "step"), consumed)])

    def end_turn(self) -> TurnOutputs:
        n = self.turns
        self.pipeline.end_turn()
        self.pipeline.drain()
        assert self.turns == n + 1
        return self.emitted[-1]

    def close(self) -> None:
        self.pipeline.stop()
        self.log.close()
