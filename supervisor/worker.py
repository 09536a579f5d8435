"""Worker processes: where saga state machines run.

Each worker owns the saga objects sharded to it (``saga_id % workers``) and
nothing else: it never touches the log or the host pipe.  It reads batches of
messages from the supervisor (one pickled list per frame), calls user code,
and answers with one batch per input batch.  A terminal (``Done``/``Failed``)
is claimed here, directly in the shared claim table; only the winner reports
it.  An exception in user code fails that saga, never the worker.

The messages are listed in :mod:`supervisor.protocol`.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import signal
import sys
import time
import traceback
from typing import Any

import dill

from supervisor.common.jsontext import loads as json_loads
from supervisor.wire.codec import class_facts, compact_json
from supervisor.frames import HOST_HDR_SIZE, MAX_FRAME, READ_SIZE, FrameReader, frame
from supervisor.protocol import (HEARTBEAT_EVERY, MAX_BATCH, STATE_DICT, Act, Op, cmd_last,
                                 kept_after_last)
from supervisor.saga import (
    Done,
    Event,
    Failed,
    IssueCmd,
    Retry,
    Saga,
    SagaContext,
    StepInfo,
    Target,
    Wait,
    new_event,
)
from supervisor.shmem.state import SharedState

CLS, START, EVENT, COMP, DROP, STOP, SENT, REPLAY = (
    Op.CLS, Op.START, Op.EVENT, Op.COMP, Op.DROP, Op.STOP, Op.SENT, Op.REPLAY)
ACT, COMPS, HEARTBEAT, READY, REPLAYED, ACK = (
    Op.ACT, Op.COMPS, Op.HEARTBEAT, Op.READY, Op.REPLAYED, Op.ACK)
A_CMD, A_WAIT, A_DONE, A_FAILED = Act.CMD, Act.WAIT, Act.DONE, Act.FAILED


# a target's number and its step name (for a command without "op"), looked
# up once a step instead of int() and name.lower() on the enum
_TARGETS = {t: (int(t), t.name.lower()) for t in Target}
# a host command's JSON must fit one host frame (ASCII: its length in bytes)
MAX_HOST_COMMAND = MAX_FRAME - HOST_HDR_SIZE


def describe_exc(where: str, exc: BaseException) -> str:
    return f"exception in {where}: {type(exc).__name__}: {exc}"


def encode_action(action: Any, where: str) -> tuple[int, Any]:
    """Validate a user action; return (code, arg).  Garbage becomes a failure."""
    t = type(action)
    if t is IssueCmd:
        target = action.target
        if not isinstance(target, Target):
            try:
                target = Target(target)
            except ValueError:
                return A_FAILED, (f"invalid action from {where}: IssueCmd target "
                                  f"{action.target!r} is not a Target")
        try:
            cmd_json = compact_json(action.command)
        except (TypeError, ValueError, RecursionError) as exc:
            why = "it contains itself" if isinstance(exc, RecursionError) else str(exc)
            return A_FAILED, f"invalid action from {where}: command is not JSON-encodable: {why}"
        cmd = action.command
        code, step_name = _TARGETS[target]
        if len(cmd_json) > MAX_HOST_COMMAND and target is Target.HOST:
            return A_FAILED, (f"invalid action from {where}: the command's JSON is "
                              f"{len(cmd_json):,} bytes, over the {MAX_HOST_COMMAND:,} a host "
                              "frame carries")
        if isinstance(cmd, dict):
            op = cmd.get("op", cmd)  # (the dict itself: no "op" key)
            if op is not cmd:
                step_name = op if type(op) is str else str(op)
        last = action.last
        if last is not False and last is not True:
            return A_FAILED, f"invalid action from {where}: IssueCmd last must be a bool, " \
                f"got {last!r:.100}"
        arg = (code, cmd_json, step_name[:200])
        policy = None
        if action.retry is not None or action.step_timeout is not None:
            policy = retry_policy(action.retry, action.step_timeout)
            if isinstance(policy, str):
                return A_FAILED, f"invalid action from {where}: {policy}"
        if last:  # (the shape protocol.cmd_policy and cmd_last read)
            return A_CMD, arg + (policy, True)
        return A_CMD, arg if policy is None else arg + (policy,)
    if t is Wait:
        return A_WAIT, None
    if t is Done:
        return A_DONE, None
    if t is Failed:
        return A_FAILED, str(action.reason)
    return A_FAILED, (f"invalid action from {where}: returned {action!r:.200} "
                      "(expected IssueCmd, Wait, Done or Failed)")


def retry_policy(retry: Any, step_timeout: Any
                 ) -> tuple[int, float, float, float | None] | str:
    """(attempts, backoff, max_backoff, step timeout) of an IssueCmd, as it
    travels to the supervisor, or why it is invalid."""
    if retry is not None and not isinstance(retry, Retry):
        return f"IssueCmd retry must be a supervisor.Retry, got {retry!r:.100}"
    if step_timeout is None and retry is not None:
        step_timeout = retry.step_timeout
    if step_timeout is not None and (
            isinstance(step_timeout, bool) or not isinstance(step_timeout, (int, float))
            or not 0 < step_timeout < float("inf")):
        return f"IssueCmd step_timeout must be a number of seconds > 0, got {step_timeout!r}"
    if retry is None:
        return (1, 0.0, 0.0, step_timeout)
    return (retry.attempts, retry.backoff, retry.max_backoff, step_timeout)


class WorkerState:
    """Everything one worker holds; `handle` maps an input batch to replies."""

    def __init__(self, shared: SharedState) -> None:
        self.shared = shared
        self.classes: dict[int, type[Saga]] = {}
        self.sagas: dict[int, tuple[Saga, SagaContext]] = {}
        self.ended: set[int] = set()
        self.issued: dict[int, int] = {}  # commands returned per saga
        self.deferred: dict[int, list[tuple[Any, ...]]] = {}

    def _settle(self, sid: int, code: int, claim: bool) -> bool:
        """A Done/Failed for `sid`: take its claim (unless the supervisor holds
        it already) and keep or forget the saga.  False if the claim was lost:
        another party decided this saga's terminal, so do nothing visible."""
        if claim and not self.shared.claim(sid):
            self.sagas.pop(sid, None)
            return False
        if code == A_DONE:  # nothing to compensate: forget it now
            self.sagas.pop(sid, None)
            self.issued.pop(sid, None)
        else:  # kept for compensate() until the supervisor sends DROP
            self.ended.add(sid)
        return True

    def _forget(self, sid: int) -> None:
        self.sagas.pop(sid, None)
        self.ended.discard(sid)
        self.issued.pop(sid, None)
        self.deferred.pop(sid, None)

    def _issued_last(self, sid: int, arg: Any) -> bool:
        """After a CMD: forget the saga if it is its last step and nothing
        more of it can reach this worker (:func:`kept_after_last`)."""
        if not cmd_last(arg):
            return False
        facts = class_facts(type(self.sagas[sid][0]))
        if kept_after_last(facts.has_comp, facts.listens):
            return False
        self._forget(sid)
        return True

    def _finish(self, out: list[Any], sid: int, code: int, arg: Any,
                consumed: bytes | str | None) -> None:
        if code == A_CMD:
            if not self._issued_last(sid, arg):
                self.issued[sid] = self.issued.get(sid, 0) + 1
        elif (code == A_DONE or code == A_FAILED) and not self._settle(sid, code, claim=True):
            return
        out.append((ACT, sid, code, arg, consumed))

    def handle(self, batch: list[Any]) -> list[Any]:
        out: list[Any] = []
        for msg in batch:
            op = msg[0]
            if op == EVENT:
                self._event(out, msg)
            elif op == START:
                sid, cid, state, name = msg[1], msg[2], msg[3], msg[4]
                try:
                    saga = self._rebuild(cid, state)
                    ctx = SagaContext(sid, name)
                    self.sagas[sid] = (saga, ctx)
                    action = saga.start(ctx)
                except Exception as exc:
                    code, arg = A_FAILED, describe_exc("start", exc)
                else:
                    code, arg = encode_action(action, "start")
                self._finish(out, sid, code, arg, None)
            elif op == REPLAY:
                self._replay(out, *msg[1:])
            elif op == SENT:
                self._released(out, msg[1], msg[2])
            elif op == DROP:
                self._forget(msg[1])
            elif op == COMP:
                out.append(self._compensate(msg[1], msg[2]))
            elif op == CLS:
                self.classes[msg[1]] = dill.loads(msg[2])
        return out

    def _event(self, out: list[Any], msg: tuple[Any, ...]) -> None:
        sid = msg[1]
        entry = self.sagas.get(sid)
        if entry is None or sid in self.ended:
            return
        if msg[8] < self.issued.get(sid, 0):
            # Forwarded before our last command was dispatched: hold it until the
            # supervisor says the command went out, so that a terminal we claim
            # for this event can never precede that dispatch (no work after end).
            self.deferred.setdefault(sid, []).append(msg)
            return
        saga, ctx = entry
        raw = msg[3]
        if msg[4]:  # raw host payload: {"kind": ..., "data": ...}
            try:
                obj = json_loads(raw)
                kind, data = str(obj.get("kind")), obj.get("data")
            except (ValueError, AttributeError, RecursionError) as exc:
                # the awaiting saga sees it and decides (most fail on it)
                kind, data = "undecodable", {"error": f"{type(exc).__name__}: {exc}"[:500]}
                raw = _event_json(kind, data)
            consumed: str | bytes = raw
        else:
            kind, data = msg[2], raw
            consumed = ""
        event = new_event(kind, data, msg[5], msg[6], msg[7])
        try:
            action = saga.on_event(event, ctx)
        except Exception as exc:  # user code: fail the saga, not the worker
            code, arg = A_FAILED, describe_exc("on_event", exc)
        else:
            code, arg = encode_action(action, "on_event")
        if code == A_WAIT:
            return
        if not consumed:
            consumed = _event_json(kind, data)
        self._finish(out, sid, code, arg, consumed)

    def _released(self, out: list[Any], sid: int, sent: int) -> None:
        held = self.deferred.pop(sid, None)
        if not held:
            return
        for msg in held:
            self._event(out, msg[:8] + (max(msg[8], sent),))

    def _replay(self, out: list[Any], sid: int, cid: int, state: tuple[int, bytes], name: str,
                steps: list[tuple[int, int, str, str | None]], inherited: bool) -> None:
        reissue = False
        n_cmds = 0
        try:
            saga = self._rebuild(cid, state)
            ctx = SagaContext(sid, name)
            self.sagas[sid] = (saga, ctx)
            code, arg = encode_action(saga.start(ctx), "start")
            for index, target, cmd_json, output in steps:
                if code != A_CMD or arg[0] != target or \
                        json.loads(arg[1]) != json.loads(cmd_json):
                    got = f"{Target(arg[0]).name} {arg[1]}" if code == A_CMD else \
                        ("Wait" if code == A_WAIT else "Done" if code == A_DONE
                         else f"Failed({arg})")
                    code, arg = A_FAILED, (f"non-deterministic replay: step {index} was "
                                           f"{Target(target).name} {cmd_json}, replay gave {got}")
                    break
                n_cmds += 1
                if output is None:  # the open step: send it again, same saga id and step
                    reissue = True
                    break
                obj = json.loads(output)
                event = Event(str(obj.get("kind")), obj.get("data"), sid, index, 0)
                code, arg = encode_action(saga.on_event(event, ctx), "on_event")
                if code == A_WAIT:
                    code, arg = A_FAILED, (f"non-deterministic replay: the event of step "
                                           f"{index} was consumed, replay returned Wait")
                    break
        except Exception as exc:
            code, arg = A_FAILED, describe_exc("replay", exc)
        self.issued[sid] = n_cmds
        if reissue:
            self._issued_last(sid, arg)
            out.append((REPLAYED, sid, A_CMD, arg, True))
            return
        # `inherited`: the claim was taken by a worker that died; the supervisor
        # holds it now, and only wants to know which outcome the replay reaches
        if code == A_CMD:
            if not self._issued_last(sid, arg):
                self.issued[sid] = n_cmds + 1
        elif (code == A_DONE or code == A_FAILED) and \
                not self._settle(sid, code, claim=not inherited):
            return
        out.append((REPLAYED, sid, code, arg, False))

    def _rebuild(self, cid: int, state: tuple[int, bytes]) -> Saga:
        kind, data = state
        if kind == STATE_DICT:
            cls = self.classes[cid]
            saga = cls.__new__(cls)
            saga.__dict__.update(pickle.loads(data))
            return saga
        saga = dill.loads(data)
        if not isinstance(saga, Saga):
            raise TypeError(f"unpickled {type(saga).__name__}, not a Saga")
        return saga

    def _compensate(self, sid: int, steps: list[tuple[int, int, str]]) -> tuple[Any, ...]:
        entry = self.sagas.get(sid)
        if entry is None:
            return (COMPS, sid, [], "saga object not held by this worker")
        saga, ctx = entry
        result: list[tuple[int, int | None, str | None]] = []
        for index, target, cmd_json in steps:
            try:
                info = StepInfo(index, Target(target), json.loads(cmd_json))
                action = saga.compensate(info, ctx)
            except Exception as exc:
                return (COMPS, sid, result, describe_exc("compensate", exc))
            if action is None:
                result.append((index, None, None))
                continue
            code, arg = encode_action(action, "compensate")
            if code != A_CMD:
                return (COMPS, sid, result, f"compensate() must return IssueCmd or None: {arg}")
            result.append((index, arg[0], arg[1]))
        return (COMPS, sid, result, None)


def _event_json(kind: str, data: Any) -> str:
    try:
        return compact_json({"kind": kind, "data": data})
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(data)
        except RecursionError:
            text = f"<unprintable {type(data).__name__}>"
        return json.dumps({"kind": kind, "data": text[:10_000]})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def worker_main(index: int, shm_name: str, in_conn: Any, out_conn: Any) -> None:
    """Entry point of a worker process (started with the spawn method)."""
    # born with SIGINT blocked (see WorkerPool._start): Ctrl-C is the
    # launcher's to handle, and it stops us by closing our pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    in_fd = in_conn.fileno()
    out_fd = out_conn.fileno()
    shared = SharedState.attach(shm_name)
    state = WorkerState(shared)
    reader = FrameReader(max_frame=MAX_BATCH)  # a turn's batch: many sagas' states
    loads = pickle.loads
    dumps = pickle.dumps
    last_write = time.monotonic()
    handled = 0  # input batches handled, acknowledged in every reply
    try:
        os.write(out_fd, frame(dumps([(READY, os.getpid())], protocol=5)))
        while True:
            ready, _, _ = select.select([in_fd], [], [], HEARTBEAT_EVERY)
            if not ready:
                # idle: say we are alive (a worker stuck in user code says nothing)
                os.write(out_fd, frame(dumps([(HEARTBEAT, len(state.sagas))], protocol=5)))
                last_write = time.monotonic()
                continue
            data = os.read(in_fd, READ_SIZE)
            if not data:
                break  # supervisor closed our pipe: exit quietly
            stop = False
            wrote = False
            for body in reader.feed(data):
                batch = loads(body)
                if batch and batch[-1][0] == STOP:
                    stop = True
                    batch = batch[:-1]
                replies = state.handle(batch)
                # answer each batch before the next one runs: a batch not
                # acknowledged when this process dies is the one that killed it
                handled += 1
                replies.append((ACK, handled))
                _write_all(out_fd, frame(dumps(replies, protocol=5)))
                wrote = True
            if not wrote and time.monotonic() - last_write > HEARTBEAT_EVERY:
                _write_all(out_fd, frame(dumps([(HEARTBEAT, len(state.sagas))], protocol=5)))
                wrote = True
            if wrote:
                last_write = time.monotonic()
            if stop:
                break
    except BrokenPipeError:
        pass
    except Exception:  # pragma: no cover - a bug in the worker itself
        traceback.print_exc(file=sys.stderr)
        raise
    finally:
        shared.close()
