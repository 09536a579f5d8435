"""The engine's loop-thread core (:class:`SagaCore`, the one constructor the
engine uses too) against a real shared segment and a real SQLite log, with
no worker or host process:
worker replies and host frames are fed in directly (test_engine_units.py,
test_fuzz.py)."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from supervisor import SharedState
from supervisor.wire.codec import ClassRegistry, SagaSpec
from supervisor._engine.parts import SagaCore
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
from supervisor._engine.table import SagaTable
from supervisor.frames import T_EVENT, host_frame
from supervisor.store.sqlite import SagaLog
from supervisor.protocol import STATE_DICT, Act, Op


def answer(sid: int, step: int, kind: int = T_EVENT, payload: bytes = b'{"kind":"echo"}',
           attempt: int = 1) -> bytes:
    """A host frame's body, as the reader yields it."""
    return host_frame(kind, sid, step, payload, attempt)[4:]


class Parts:
    """The engine's core for one test, built as Engine._start builds it."""

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
        self.sent: deque[list[Any]] = deque(maxlen=64)  # the worker's batches, as sent
        self.turns = 0
        core = SagaCore(self.log, shared, self.table, self.turn, self.stats, self.life,
                        pick_worker=lambda sid: self.worker, ship_class=lambda cid: None,
                        send_workers=self._send, emit=self._emitted,
                        prepare=ClassRegistry().prepare, pipeline_rows=pipeline_rows)
        self.core = core
        self.sagas, self.comp, self.group_commit = core.sagas, core.compensation, core.group_commit
        self.recovery, self.retries = core.recovery, core.retries
        self.routing, self.dispatch = core.routing, core.dispatch

    def _send(self) -> None:
        if self.worker.outbox:
            self.sent.append(self.worker.outbox)
            self.worker.outbox = []

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
        self.group_commit.end_turn()
        self.group_commit.drain()
        assert self.turns == n + 1
        return self.emitted[-1]

    def close(self) -> None:
        self.group_commit.stop()
        self.log.close()
