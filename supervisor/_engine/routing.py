"""Worker replies and host frames, each to its saga and step.  Loop thread only.

Host answers carry ``(saga_id, step)``: one dict lookup routes them; nothing
here scans the sagas in flight, except when the host is lost.  Each input is
its own failure boundary: an input that cannot be handled is counted
(``input_errors``, or ``bad_frames`` for the host) and logged, the saga it
names (if any) fails with the reason, and the loop goes on.  Only the log's
errors (:class:`LogError`) and ``KeyboardInterrupt`` pass through.
"""

from __future__ import annotations

import logging
from typing import Any

import supervisor.frames as frames
from supervisor._engine.compensation import Compensation
from supervisor._engine.recovery import Recovery
from supervisor._engine.records import COMPENSATING, HOST, HostProc, Stats, Turn
from supervisor._engine.retries import Retries
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable
from supervisor.common.ratelimit import RateLimitedLog
from supervisor.store.sqlite import LogError
from supervisor.protocol import Op
from supervisor.saga import SAGA_ACTION_FAILED
from supervisor.shmem.state import SharedState

log = logging.getLogger(__name__)

# what no input boundary may swallow: the log's failure ends the loop by name
FATAL = (KeyboardInterrupt, LogError)


class Routing:
    def __init__(self, table: SagaTable, shared: SharedState, sagas: SagaOps,
                 compensation: Compensation, recovery: Recovery, turn: Turn,
                 stats: Stats, retries: Retries) -> None:
        self.table = table
        self.shared = shared
        self.sagas = sagas
        self.compensation = compensation
        self.recovery = recovery
        self.turn = turn
        self.stats = stats
        self.retries = retries
        self.warn = RateLimitedLog(log)

    # -- worker replies ---------------------------------------------------------

    def worker_replies(self, replies: list[Any]) -> None:
        live = self.table.live
        sagas = self.sagas
        for r in replies:
            try:
                op = r[0]
                if op == Op.ACT:
                    saga = live.get(r[1])
                    if saga is not None:
                        sagas.act(saga, r[2], r[3], r[4])
                elif op == Op.REPLAYED:
                    saga = live.get(r[1])
                    if saga is not None:
                        self.recovery.replayed(saga, r[2], r[3], r[4])
                elif op == Op.COMPS:
                    saga = live.get(r[1])
                    if saga is not None and saga.phase == COMPENSATING:
                        self.compensation.begin(saga, r[2], r[3])
                elif op != Op.HEARTBEAT and op != Op.READY:
                    raise ValueError(f"unknown reply {r!r:.80}")
            except FATAL:
                raise
            except BaseException as exc:
                sid = r[1] if isinstance(r, tuple) and len(r) > 1 else None
                self.input_failed("a worker reply", sid, exc)

    def input_failed(self, what: str, sid: Any, exc: BaseException) -> None:
        """An input could not be handled: count it, say so (rate-limited), and
        fail the saga it names (`sid`), if one is in flight."""
        self.stats["input_errors"] += 1
        why = f"internal error handling {what}: {type(exc).__name__}: {exc}"
        self.warn.warning("input_error", "%s (saga %s)", why, sid)
        saga = self.table.get(sid) if isinstance(sid, int) else None
        if saga is None:
            return
        try:
            self.sagas.fail(saga, why[:1000])
        except FATAL:
            raise
        except BaseException:  # pragma: no cover - the bookkeeping itself is broken
            log.exception("could not fail saga %s after %s", sid, why)

    # -- host frames -------------------------------------------------------------

    def host_frame(self, h: HostProc, body: bytes) -> None:
        h.frames_in += 1
        try:
            self._host_frame(h, body)
        except FATAL:
            raise
        except BaseException as exc:
            self.bad_frame(h, f"{type(exc).__name__}: {exc}")

    def bad_frame(self, h: HostProc, why: str) -> None:
        h.bad_frames += 1
        self.stats["bad_frames"] += 1
        self.warn.warning("bad_frame", "bad host frame: %s", why)

    def _host_frame(self, h: HostProc, body: bytes) -> None:
        try:
            kind, sid, step, attempt, payload = frames.parse_host_frame(body)
        except frames.FrameError as exc:
            self.bad_frame(h, str(exc))
            return
        if sid == 0:  # an event addressed to no saga: a domain event for the bus
            if kind != frames.T_EVENT:
                self.bad_frame(h, f"frame type {kind} for saga 0")
                return
            try:
                obj = frames.decode_json_object(payload, "host event")
            except frames.FrameError as exc:
                self.bad_frame(h, str(exc))
                return
            self.turn.events.append((str(obj.get("kind", "host")), obj.get("data"), None, None))
            return
        saga = self.table.get(sid)
        if saga is None or step <= 0 or step >= saga.next_step:
            if saga is None and sid < self.shared.peek_next_id():
                # an answer that arrives after its saga ended (timeout, eviction,
                # cancel): expected, counted, not worth a warning each
                self.stats["late_answers"] += 1
                return
            self.unknown_answer(h, sid, step, "no such saga/step in flight")
            return
        if kind == frames.T_EVENT:
            if saga.phase == COMPENSATING:
                if not self.compensation.answer(saga, step, None):
                    self.unknown_answer(h, sid, step, "stale compensation answer")
                return
            if step != saga.open_step:
                saga.needs_sent_ack = True
            self.sagas.answered(saga, step, payload)
        elif kind == frames.T_ACTION_FAILED:
            try:
                reason = str(frames.decode_json_object(payload, "action failed").get("reason"))
            except frames.FrameError as exc:
                reason = f"(unreadable reason: {exc})"
            if saga.phase == COMPENSATING:
                if not self.compensation.answer(saga, step, reason):
                    self.unknown_answer(h, sid, step, "stale compensation answer")
                return
            if step != saga.open_step:
                self.unknown_answer(h, sid, step, "action failed for a step that is not open")
                return
            self.retries.step_failed(saga, step, attempt, f"action failed: {reason}", (
                SAGA_ACTION_FAILED, {"name": saga.name, "reason": reason}, sid, step))
        else:
            self.bad_frame(h, f"frame type {kind} from the host")

    def unknown_answer(self, h: HostProc, sid: int, step: int, why: str) -> None:
        self.stats["unknown_answers"] += 1
        h.unknown_answers += 1
        self.warn.warning("unknown_answer", "host answer for saga %d step %d ignored: %s",
                          sid, step, why)

    def host_lost(self, why: str, restarted: bool) -> None:
        """The host died: re-issue every open host step to its replacement
        (same saga id and step), or fail the sagas waiting on it."""
        for saga in self.table.all():
            if saga.phase == COMPENSATING:
                if saga.comp_wait is not None:
                    self.compensation.abort(saga, why)
            elif saga.open_step and saga.open_cmd is not None and saga.open_cmd[0] == HOST \
                    and not saga.retry_wait:  # (a retry due later goes out then)
                if restarted:
                    self.stats["reissued"] += 1
                    self.turn.command(saga.saga_id, saga.open_step, HOST, saga.open_cmd[1])
                else:
                    self.sagas.fail(saga, why)
