"""Sending commands once their turn is committed.  Loop thread only.

**No work after the end** is decided here, right before a command leaves:
a command of a saga whose terminal was claimed since it was issued is never
written to the host nor handed to a handler.  Every non-worker claimant runs
on this thread, so the check is exact against them; a worker could still
claim concurrently, which is why each dispatch is counted
(``LiveSaga.dispatched``) and, where the saga's worker may hold an event back
(``needs_sent_ack``), acknowledged with ``SENT``: a worker holds an event
forwarded before its saga's last command went out until that ``SENT``
arrives (see :mod:`supervisor.worker`), so it cannot claim a terminal between
a command's issue and its dispatch.

Local targets (LAUNCHER_SELF, SRV) run the registered handler here, inside a
failure boundary: a handler that raises fails that saga (or that
compensation), nothing else.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import supervisor.frames as frames
from supervisor._engine.compensation import Compensation
from supervisor._engine.records import COMPENSATING, RUNNING, HostProc, Stats
from supervisor._engine.retries import Retries
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable
from supervisor.protocol import Op
from supervisor.saga import Target
from supervisor.shmem.state import SharedState

log = logging.getLogger(__name__)

Handler = Callable[[Any, int, int], Any]
_NO_HANDLER_ECHO = b'{"kind":"echo","data":null}'


class Dispatch:
    def __init__(self, table: SagaTable, shared: SharedState, sagas: SagaOps,
                 compensation: Compensation, handlers: dict[Target, Handler],
                 stats: Stats, retries: Retries, host_protocol: int = 2) -> None:
        self.table = table
        self.shared = shared
        self.sagas = sagas
        self.compensation = compensation
        self.handlers = handlers
        self.stats = stats
        self.retries = retries
        self.version = host_protocol

    def to_host(self, host: HostProc | None, out: list[tuple[int, int, str, bool]]) -> None:
        """Frame a committed turn's host commands into the host's buffer (the
        loop writes it out).  With no live host, each awaiting saga fails."""
        live = self.table.live
        if host is None or not host.alive:
            why = "host pipe send failed: no host is configured" if host is None else \
                f"host pipe send failed: {host.death}"
            for sid, step, _cmd, _counts in out:
                saga = live.get(sid)
                if saga is None:
                    continue
                if saga.phase == COMPENSATING:
                    self.compensation.answer(saga, step, why)
                elif saga.open_step == step:
                    self.sagas.fail(saga, why)
            return
        is_claimed = self.shared.is_claimed
        buf = host.outbuf
        frame = frames.host_frame
        sent = 0
        now = time.monotonic() if self.sagas.observations.enabled else 0.0
        version = self.version
        for sid, step, cmd_json, counts in out:
            saga = live.get(sid)
            if saga is None:
                continue
            attempt = 1
            if saga.phase == RUNNING:
                if is_claimed(sid):
                    continue  # claimed since it was issued: never send after the end
                if counts:
                    saga.dispatched += 1
                if saga.needs_sent_ack:
                    saga.worker.outbox.append((Op.SENT, sid, saga.dispatched))
                if saga.policy is not None and step == saga.open_step:
                    attempt = saga.attempt
                    self.retries.sent(saga)
            buf += frame(frames.T_CMD, sid, step, cmd_json.encode(), attempt, version)
            saga.step_sent = now
            sent += 1
        host.frames_out += sent

    def to_local(self, out: list[tuple[int, int, int, str]]) -> None:
        """Run LAUNCHER_SELF/SRV handlers for a committed turn's commands; the
        handler's return value is the step's echo."""
        for sid, step, target, cmd_json in out:
            saga = self.table.get(sid)
            if saga is None:
                continue
            if saga.phase == RUNNING and self.shared.is_claimed(sid):
                continue
            handler = self.handlers.get(Target(target))
            if handler is not None:
                try:
                    result = handler(json.loads(cmd_json), sid, step)
                    payload = json.dumps({"kind": "echo", "data": result}).encode()
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # user code: fails this saga only
                    why = f"{Target(target).name} handler raised {type(exc).__name__}: {exc}"
                    if saga.phase == COMPENSATING:
                        self.compensation.answer(saga, step, why)
                    else:
                        self.retries.step_failed(saga, step, 0, why)
                    continue
            else:
                payload = _NO_HANDLER_ECHO
            if saga.phase == COMPENSATING:
                self.compensation.answer(saga, step, None)
                continue
            saga.dispatched += 1
            self.sagas.answered(saga, step, payload)
