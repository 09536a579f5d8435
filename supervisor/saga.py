"""The saga model: what user code subclasses and returns.

A saga is a small state machine that runs in a worker process.  It issues
commands (:class:`IssueCmd`), waits for each command's echo, and ends in
exactly one terminal outcome (:class:`Done` or :class:`Failed`).  Everything
here is a frozen dataclass or a plain base class; nothing here does I/O.
"""

from __future__ import annotations

import enum
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
LIFECYCLE_KINDS = frozenset({SAGA_STARTED, SAGA_COMPLETED, SAGA_FAILED, SAGA_ACTION_FAILED,
                             SAGA_SPAWN_FAILED})


class Target(enum.IntEnum):
    """Where an :class:`IssueCmd` goes."""

    HOST = 1  #: sent on the host pipe; the host answers with an echo
    LAUNCHER_SELF = 2  #: handled in the supervisor by a registered handler
    SRV = 3  #: handled in the supervisor by a registered handler


@dataclass(frozen=True, slots=True)
class IssueCmd:
    """Issue `command` (a JSON-serialisable value, usually a dict) to `target`;
    the saga is parked until the command's echo is offered to ``on_event``."""

    target: Target
    command: Any


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
