"""Saga classes used by the engine tests (importable by spawned workers)."""

from __future__ import annotations

import os
from typing import Any

from supervisor import (
    Done,
    Event,
    Failed,
    IssueCmd,
    Saga,
    SagaAction,
    SagaContext,
    StepInfo,
    Target,
    Wait,
)


class EchoSaga(Saga):
    """Issues `steps` echo commands to the host, one after another; with
    `last`, the final one is issued as ``IssueCmd(last=True)`` (its echo ends
    the saga in the supervisor, never offered to ``on_event``)."""

    name = "echo"

    def __init__(self, n: int = 0, steps: int = 1, timeout: float = 10.0,
                 last: bool = False) -> None:
        self.n = n
        self.steps = steps
        self.done = 0
        self.timeout = timeout  # type: ignore[misc]
        if last:
            self.last = True  # (only then: the plain saga's state is as it was)

    def input_snapshot(self) -> dict[str, Any]:
        if "last" in self.__dict__:
            return {"n": self.n, "steps": self.steps, "last": True}
        return {"n": self.n, "steps": self.steps}

    def _command(self) -> IssueCmd:
        last = self.done + 1 >= self.steps and "last" in self.__dict__
        return IssueCmd(Target.HOST, {"op": "echo", "n": self.n, "i": self.done}, last=last)

    def start(self, ctx: SagaContext) -> SagaAction:
        return self._command()

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind != "echo" or event.saga_id != ctx.saga_id:
            return Wait()
        self.done += 1
        if "last" in self.__dict__ and self.done >= self.steps:
            return Failed("on_event was offered the echo of a last step")
        if self.done >= self.steps:
            return Done()
        return self._command()


class InstantSaga(Saga):
    name = "instant"

    def start(self, ctx: SagaContext) -> SagaAction:
        return Done()


class BulkySaga(Saga):
    """One echo, with `size` bytes of state that travel to its worker."""

    name = "bulky"

    def __init__(self, size: int) -> None:
        self.blob = b"b" * size

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "echo"})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Done()


class RefusingSaga(Saga):
    """Asks the host to fail its only command."""

    name = "refusing"

    def __init__(self, delay: float = 0.0, listen: bool = False) -> None:
        self.delay = delay

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "fail", "reason": "host says no",
                                      "seconds": self.delay})


class SleepSaga(Saga):
    """One host sleep; completes on its echo or on a 'finish' bus event."""

    name = "sleeper"
    listens_to = frozenset({"finish"})

    def __init__(self, seconds: float, timeout: float = 10.0, op: str = "sleep") -> None:
        self.seconds = seconds
        self.op = op
        self.timeout = timeout  # type: ignore[misc]

    def start(self, ctx: SagaContext) -> SagaAction:
        if self.op == "fail":
            return IssueCmd(Target.HOST, {"op": "fail", "reason": "late refusal",
                                          "seconds": self.seconds})
        return IssueCmd(Target.HOST, {"op": "sleep", "seconds": self.seconds})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind in ("echo", "finish"):
            return Done()
        return Wait()


class TriggeredSaga(Saga):
    """Spawned by a trigger: records the trigger event, then one slow echo."""

    name = "triggered"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.seen: list[str] = []

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "sleep", "seconds": self.seconds})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind == "deploy":
            return Wait()  # the trigger event is offered too; not the awaited one
        if event.kind == "echo":
            return Done()
        return Wait()


class RaisingSaga(Saga):
    name = "raising"

    def __init__(self, where: str) -> None:
        self.where = where

    def start(self, ctx: SagaContext) -> SagaAction:
        if self.where == "start":
            raise RuntimeError("boom in start")
        return IssueCmd(Target.HOST, {"op": "echo"})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        raise KeyError("boom in on_event")


class GarbageSaga(Saga):
    name = "garbage"

    def __init__(self, what: str) -> None:
        self.what = what

    def start(self, ctx: SagaContext) -> Any:
        if self.what == "int":
            return 42
        if self.what == "badcmd":
            return IssueCmd(Target.HOST, {"op": "echo", "x": object()})
        if self.what == "badtarget":
            return IssueCmd("nowhere", {"op": "echo"})  # type: ignore[arg-type]
        if self.what == "hugecmd":  # over what one host frame carries (16 MiB)
            return IssueCmd(Target.HOST, {"op": "echo", "pad": "x" * (17 << 20)})
        return None


class OddTextSaga(Saga):
    """Fails with a reason, or issues a command named, holding a NUL and a
    lone surrogate: text a log refuses as it is."""

    name = "odd-text"
    ODD = "nul\x00 surrogate\udc80"

    def __init__(self, where: str) -> None:
        self.where = where

    def start(self, ctx: SagaContext) -> SagaAction:
        if self.where == "reason":
            return Failed(self.ODD)
        return IssueCmd(Target.HOST, {"op": self.ODD})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Done()


class HostFaultSaga(Saga):
    """Asks the reference host for one of its fault-injection ops."""

    name = "hostfault"

    def __init__(self, op: str) -> None:
        self.op = op

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": self.op})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Done() if event.kind == "echo" else Wait()


class LocalSaga(Saga):
    """One command to LAUNCHER_SELF or SRV; completes with what the echo says."""

    name = "local"

    def __init__(self, target: Target) -> None:
        self.target = target

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(self.target, {"op": "configure", "value": 7})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind != "echo":
            return Wait()
        if event.data is None or (isinstance(event.data, dict) and
                                  event.data.get("value") == 7):
            return Done()
        return Failed(f"unexpected echo {event.data!r}")


class CompensatingSaga(Saga):
    """Three steps, then fails; each step is undone by an 'undo' echo."""

    name = "compensating"

    def __init__(self, fail_how: str = "failed", undo_op: str = "echo",
                 undo_seconds: float = 0.0) -> None:
        self.fail_how = fail_how
        self.undo_op = undo_op
        self.undo_seconds = undo_seconds
        self.steps_done = 0

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "echo", "do": 1})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind != "echo":
            return Wait()
        self.steps_done += 1
        if self.steps_done < 3:
            return IssueCmd(Target.HOST, {"op": "echo", "do": self.steps_done + 1})
        if self.fail_how == "host":
            return IssueCmd(Target.HOST, {"op": "fail", "reason": "step 4 refused"})
        return Failed("gave up after step 3")

    def compensate(self, step: StepInfo, ctx: SagaContext) -> IssueCmd | None:
        if step.command.get("op") != "echo":
            return None
        return IssueCmd(Target.HOST, {"op": self.undo_op, "undo": step.command["do"],
                                      "reason": "undo refused",
                                      "seconds": getattr(self, "undo_seconds", 0.0)})


class UnpicklableSaga(Saga):
    name = "unpicklable"

    def __init__(self) -> None:
        self.gen = (i for i in range(3))  # neither pickle nor dill can ship a generator

    def start(self, ctx: SagaContext) -> SagaAction:
        return Done()


class ExitingSaga(Saga):
    """Kills its own worker from user code (os._exit)."""

    name = "exiting"

    def start(self, ctx: SagaContext) -> SagaAction:
        os._exit(7)


class StepperSaga(Saga):
    """`steps` host sleeps in a row, deterministic: replayable from its snapshot.
    Answers for an older step (a re-issued command answered twice) are ignored."""

    name = "stepper"

    def __init__(self, n: int = 0, steps: int = 3, seconds: float = 0.01,
                 timeout: float = 120.0) -> None:
        self.n = n
        self.steps = steps
        self.seconds = seconds
        self.timeout = timeout  # type: ignore[misc]
        self.done = 0

    def input_snapshot(self) -> dict[str, Any]:
        return {"n": self.n, "steps": self.steps, "seconds": self.seconds}

    def _cmd(self) -> IssueCmd:
        return IssueCmd(Target.HOST, {"op": "sleep", "seconds": self.seconds, "n": self.n,
                                      "i": self.done})

    def start(self, ctx: SagaContext) -> SagaAction:
        return self._cmd()

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind != "echo" or event.data.get("i") != self.done:
            return Wait()
        self.done += 1
        return Done() if self.done >= self.steps else self._cmd()


_HOARD: list[bytes] = []


class HogSaga(Saga):
    """Grows its worker's memory by `mb` MiB (kept after it completes)."""

    name = "hog"

    def __init__(self, mb: int) -> None:
        self.mb = mb

    def start(self, ctx: SagaContext) -> SagaAction:
        _HOARD.append(b"\x01" * (self.mb << 20))  # touch every page: real RSS
        return Done()


class StuckSaga(Saga):
    """Blocks its worker in user code for `seconds` on its echo."""

    name = "stuck"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "echo"})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        import time

        time.sleep(self.seconds)
        return Done()


class DeepSaga(Saga):
    """Asks the reference host for deeply nested JSON (`how`: event, failed,
    echo); an answer that cannot be decoded fails it."""

    name = "deep"

    def __init__(self, how: str) -> None:
        self.how = how

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "deep", "as": self.how})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind == "undecodable":
            return Failed(f"undecodable answer: {event.data['error'][:40]}")
        return Done() if event.kind == "echo" else Wait()


class SelfContainingSaga(Saga):
    """Issues a command that contains itself."""

    name = "selfish"

    def start(self, ctx: SagaContext) -> SagaAction:
        cmd: dict[str, Any] = {"op": "echo"}
        cmd["self"] = cmd
        return IssueCmd(Target.HOST, cmd)


class StraySaga(Saga):
    """Makes the reference host send a stray length prefix (once per `once` file)."""

    name = "stray"

    def __init__(self, once: str) -> None:
        self.once = once

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "stray", "once": self.once})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Done() if event.kind == "echo" else Wait()


class RetrySaga(Saga):
    """One command with a retry policy, then (optionally) an echo step.
    `command` is sent to `target` (a Target's int); `attempts`/`backoff`/
    `step_timeout` build its Retry (attempts 0: no Retry at all)."""

    name = "retrying"

    def __init__(self, command: dict[str, Any], attempts: int = 3, backoff: float = 0.01,
                 step_timeout: float | None = None, target: int = 1, then_echo: bool = False,
                 timeout: float = 10.0, max_backoff: float = 1.0) -> None:
        self.command = command
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.step_timeout = step_timeout
        self.target = target
        self.then_echo = then_echo
        self.timeout = timeout  # type: ignore[misc]
        self.first: Any = None

    def input_snapshot(self) -> dict[str, Any]:
        return {"command": self.command, "attempts": self.attempts, "backoff": self.backoff,
                "step_timeout": self.step_timeout, "target": self.target,
                "then_echo": self.then_echo, "timeout": self.timeout,
                "max_backoff": self.max_backoff}

    def start(self, ctx: SagaContext) -> SagaAction:
        from supervisor import Retry

        retry = Retry(self.attempts, self.backoff, self.max_backoff) if self.attempts else None
        return IssueCmd(Target(self.target), self.command, retry=retry,
                        step_timeout=self.step_timeout)

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.saga_id != ctx.saga_id or event.kind != "echo":
            return Wait()
        if self.then_echo and self.first is None:
            self.first = event.data
            return IssueCmd(Target.HOST, {"op": "echo", "after": event.data})
        return Done()


class LimitedSaga(Saga):
    """One host sleep; the kind tests register with max_in_flight."""

    name = "limited"
    listens_to = frozenset({"finish"})

    def __init__(self, n: int = 0, seconds: float = 0.1, timeout: float = 10.0) -> None:
        self.n = n
        self.seconds = seconds
        self.timeout = timeout  # type: ignore[misc]

    def input_snapshot(self) -> dict[str, Any]:
        return {"n": self.n, "seconds": self.seconds, "timeout": self.timeout}

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "sleep", "seconds": self.seconds, "n": self.n})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind == "echo" and event.saga_id == ctx.saga_id:
            return Done()
        if event.kind == "finish" and event.data == self.n:
            return Done()
        return Wait()


class MarkerSaga(Saga):
    """Creates the file `path` in its start() (a side effect in its worker),
    then issues one echo."""

    name = "marker"

    def __init__(self, path: str) -> None:
        self.path = path

    def start(self, ctx: SagaContext) -> SagaAction:
        open(self.path, "w").close()
        return IssueCmd(Target.HOST, {"op": "echo"})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Done() if event.kind == "echo" else Wait()


class WhereSaga(Saga):
    """Says which worker ran it: one echo whose command carries the worker's
    pid (logged with the step).  With `gate`, its start writes `gate`.entered,
    then blocks its worker in user code until `gate` exists (a minute at most)."""

    name = "where"

    def __init__(self, gate: str | None = None) -> None:
        self.gate = gate

    def start(self, ctx: SagaContext) -> SagaAction:
        import os
        import time

        deadline = time.monotonic() + 60.0
        if self.gate is not None:
            open(self.gate + ".entered", "w").close()
        while self.gate is not None and not os.path.exists(self.gate) \
                and time.monotonic() < deadline:
            time.sleep(0.01)  # a long step, as user code may have
        return IssueCmd(Target.HOST, {"op": "echo", "pid": os.getpid()})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Done() if event.kind == "echo" else Wait()


class LastStepSaga(Saga):
    """Issues `commands` to `target` in order, the final one as
    ``IssueCmd(last=True)`` (with `attempts` > 0, under a Retry); its answer
    must end the saga without reaching ``on_event``, which fails the saga if
    it is ever offered it.  `last` replaces the flag (to send a bad value)."""

    name = "last_step"

    def __init__(self, commands: list[dict[str, Any]], target: int = 1, attempts: int = 0,
                 last: Any = True, timeout: float = 10.0) -> None:
        self.commands = commands
        self.target = target
        self.attempts = attempts
        self.last = last
        self.timeout = timeout  # type: ignore[misc]
        self.done = 0

    def input_snapshot(self) -> dict[str, Any]:
        return {"commands": self.commands, "target": self.target, "attempts": self.attempts,
                "timeout": self.timeout}

    def _next(self) -> IssueCmd:
        from supervisor import Retry

        final = self.done == len(self.commands) - 1
        retry = Retry(self.attempts, 0.01, 0.05) if final and self.attempts else None
        return IssueCmd(Target(self.target), self.commands[self.done], retry=retry,
                        last=self.last if final else False)

    def start(self, ctx: SagaContext) -> SagaAction:
        return self._next()

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.saga_id != ctx.saga_id:
            return Wait()
        self.done += 1
        if self.done >= len(self.commands):
            return Failed("on_event was offered the answer to its last step")
        return self._next()


class ListeningLastSaga(LastStepSaga):
    """A LastStepSaga that listens to ``abort`` events: one fails it."""

    name = "listening_last"
    listens_to = frozenset({"abort"})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind == "abort":
            return Failed("aborted")
        return super().on_event(event, ctx)


class CompensatedLastSaga(LastStepSaga):
    """A LastStepSaga whose succeeded steps are undone by an ``undo`` echo."""

    name = "compensated_last"

    def compensate(self, step: StepInfo, ctx: SagaContext) -> IssueCmd | None:
        return IssueCmd(Target.HOST, {"op": "echo", "undo": step.index})
