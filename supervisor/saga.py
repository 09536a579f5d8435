"""The saga model: what user code subclasses and returns.

A saga is a small state machine that runs in a worker process.  It issues
commands (:class:`IssueCmd`), waits for each command's echo, and ends in
exactly one terminal outcome (:class:`Done` or :class:`Failed`).  Everything
here is a frozen dataclass or a plain base class; nothing here does I/O.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Union

# Lifecycle event kinds on the bus (Event.kind).
SAGA_STARTED = "SagaStarted"
SAGA_COMPLETED = "SagaCompleted"
SAGA_FAILED = "SagaFailed"
SAGA_ACTION_FAILED = "SagaActionFailed"
# a trigger matched but its saga could not be spawned (factory raised, claim
# table full): data names the kind (if known), the reason and the trigger event
SAGA_SPAWN_FAILED = "SagaSpawnFailed"
# a spawn past its kind's max_in_flight waits in the kind's queue: data names
# the kind and the queue's depth; SagaStarted follows when a slot frees
SAGA_QUEUED = "SagaQueued"
LIFECYCLE_KINDS = frozenset({SAGA_STARTED, SAGA_COMPLETED, SAGA_FAILED, SAGA_ACTION_FAILED,
                             SAGA_SPAWN_FAILED, SAGA_QUEUED})


class Target(enum.IntEnum):
    """Where an :class:`IssueCmd` goes."""

    HOST = 1  #: sent on the host pipe; the host answers with an echo
    LAUNCHER_SELF = 2  #: handled in the supervisor by a registered handler
    SRV = 3  #: handled in the supervisor by a registered handler


def _seconds(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def backoff_delay(backoff: float, max_backoff: float, attempt: int) -> float:
    """Seconds to wait before issuing `attempt` (2, 3, ...) of a step."""
    return float(min(max_backoff, backoff * 2.0 ** max(0, attempt - 2)))


@dataclass(frozen=True, slots=True)
class Retry:
    """How often to try a step again when its action fails.

    A step is tried at most `attempts` times in all.  Attempt *n* (n >= 2) is
    re-issued ``min(max_backoff, backoff * 2 ** (n - 2))`` seconds after
    attempt *n - 1* failed: an ``ACTION_FAILED`` answer from the host, a local
    handler that raised, or the step's deadline (``step_timeout``) passing.
    `step_timeout` here is the default for commands that do not set their own.
    """

    attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 5.0
    step_timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"Retry.attempts must be an int, got {self.attempts!r}")
        if not 1 <= self.attempts <= 65535:
            raise ValueError(f"Retry.attempts must be 1..65535, got {self.attempts}")
        _seconds("Retry.backoff", self.backoff)
        _seconds("Retry.max_backoff", self.max_backoff)
        _seconds("Retry.step_timeout", self.step_timeout, allow_none=True)
        if self.step_timeout == 0:
            raise ValueError("Retry.step_timeout must be > 0 (or None)")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before issuing `attempt` (2, 3, ...)."""
        return backoff_delay(self.backoff, self.max_backoff, attempt)


@dataclass(frozen=True, slots=True, init=False)
class IssueCmd:
    """Issue `command` (a JSON-serialisable value, usually a dict) to `target`;
    the saga is parked until the command's echo is offered to ``on_event``.

    `retry` re-issues the same step (same saga id and step, the next attempt
    number) when its action fails; `step_timeout` (seconds) is a deadline for
    each attempt's answer.  Without `retry`, a failed or timed-out step fails
    the saga at once.

    `last=True` makes this the saga's last step: its answer completes the
    saga (the answer is logged as the step's output) and is not offered to
    ``on_event``, which saves the round trip to the worker.  A failure of
    the step (action failed, past `step_timeout`, once its retries are
    spent) or an answer that is not a JSON object fails the saga, and
    compensation runs as for any step.  Ignored in what ``compensate``
    returns."""

    target: Target
    command: Any
    retry: Retry | None = None
    step_timeout: float | None = None
    last: bool = False

    def __init__(self, target: Target, command: Any, retry: Retry | None = None,
                 step_timeout: float | None = None, last: bool = False) -> None:
        # the slots' own setters, as the generated __init__ would do it but
        # without object.__setattr__ once a field (that cost 1.1 us a
        # command, once a step in a worker; this 0.5)
        set_target, set_command, set_retry, set_timeout, set_last = _ISSUE_SET
        set_target(self, target)
        set_command(self, command)
        set_retry(self, retry)
        set_timeout(self, step_timeout)
        set_last(self, last)


def _slot_setters(cls: type, *names: str) -> tuple[Any, ...]:
    """The setters of `cls`'s slots `names`, in order: a frozen dataclass's
    fields set without ``object.__setattr__`` (trusted constructors only)."""
    return tuple(cls.__dict__[n].__set__ for n in names)


_ISSUE_SET = _slot_setters(IssueCmd, "target", "command", "retry", "step_timeout", "last")


@dataclass(frozen=True, slots=True)
class Wait:
    """The event offered was not the one awaited: stay parked, consume nothing."""


@dataclass(frozen=True, slots=True)
class Done:
    """The saga completed."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The saga failed with `reason`."""

    reason: str


SagaAction = Union[IssueCmd, Wait, Done, Failed]
ACTION_TYPES = (IssueCmd, Wait, Done, Failed)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: a host answer, a domain event or a lifecycle
    event.  Host answers carry the `saga_id` and `step` they answer; `version`
    is the bus's strictly increasing sequence number (0 until published)."""

    kind: str
    data: Any = None
    saga_id: int | None = None
    step: int | None = None
    version: int = 0


_EVENT_SET = _slot_setters(Event, "kind", "data", "saga_id", "step", "version")


def new_event(kind: str, data: Any, saga_id: int | None, step: int | None,
              version: int) -> Event:
    """An :class:`Event` built at ~half the cost of calling the class (a frozen
    dataclass sets each field through ``object.__setattr__``): once a step in
    a worker, once an event on the bus.  Trusted callers only: nothing is
    checked."""
    ev = object.__new__(Event)
    set_kind, set_data, set_sid, set_step, set_version = _EVENT_SET
    set_kind(ev, kind)
    set_data(ev, data)
    set_sid(ev, saga_id)
    set_step(ev, step)
    set_version(ev, version)
    return ev


@dataclass(frozen=True, slots=True)
class SagaContext:
    """Passed to every saga callback."""

    saga_id: int
    name: str


@dataclass(frozen=True, slots=True)
class StepInfo:
    """A succeeded step, as offered to :meth:`Saga.compensate`."""

    index: int
    target: Target
    command: Any


@dataclass(frozen=True, slots=True)
class Outcome:
    """The terminal outcome of a saga."""

    saga_id: int
    state: str  # "completed" | "failed" | "failed_compensation"
    reason: str | None = None

    @property
    def completed(self) -> bool:
        return self.state == "completed"

    @property
    def failed(self) -> bool:
        return self.state != "completed"


class Saga:
    """Base class of user sagas.  Subclass it and override :meth:`start` and
    :meth:`on_event`; instances are pickled at spawn and run in a worker.

    Class attributes:

    * ``name`` — the saga's kind (defaults to the class name); evict-and-replace
      is per kind.
    * ``timeout`` — seconds from spawn to forced failure ("saga timeout").
    * ``listens_to`` — kinds of bus events (besides the host answers addressed
      to it) that are offered to this saga while it is in flight.
    """

    name: ClassVar[str] = ""
    timeout: ClassVar[float] = 5.0
    listens_to: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__
        cls.listens_to = frozenset(cls.listens_to)

    def input_snapshot(self) -> dict[str, Any]:
        """What the saga was started with; logged once at spawn."""
        return {}

    def start(self, ctx: SagaContext) -> SagaAction:
        raise NotImplementedError(f"{type(self).__name__}.start() is not implemented")

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Wait()

    def compensate(self, step: StepInfo, ctx: SagaContext) -> IssueCmd | None:
        """Undo a succeeded step (called in reverse step order when the saga
        fails).  Return the command that undoes it, or None if nothing to do."""
        return None
