"""Every failure mode of saga-supervisor, under one base class.

Each class names one failure and carries the fields a caller needs to act on
it; the message says what happened and what to do.
"""

from __future__ import annotations

from pathlib import Path


class SupervisorError(Exception):
    """Base class of every error raised by saga-supervisor."""


class SegmentNotFoundError(SupervisorError):
    """No shared-memory segment of that name exists (is the supervisor running?)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"no shared-memory segment named {name!r}: is the supervisor that "
            "creates it running, and is the name spelled the same?"
        )


class SegmentExistsError(SupervisorError):
    """A segment of that name exists already; pick another name or unlink it."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"a shared-memory segment named {name!r} exists already: attach to "
            "it, or unlink it if its creator is gone"
        )


class LayoutMismatchError(SupervisorError):
    """The segment was not made by this build of saga-supervisor (magic,
    layout version or size disagree), or by one with another capacity."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(
            f"shared-memory segment {name!r} does not match this build's layout: "
            f"{problem}; it was created by another program or another version"
        )


class CapacityError(SupervisorError):
    """The claim table has no room: the slot is held by a live saga, or as many
    sagas as the capacity are in flight."""

    def __init__(self, message: str, capacity: int) -> None:
        self.capacity = capacity
        super().__init__(message)


class IdOverflowError(SupervisorError):
    """The id counter reached its maximum; ids are never wrapped or reused."""


class IdFenceError(SupervisorError):
    """No id could be handed out: the counter reached the segment's fence
    (the durable high-water mark the supervisor keeps ahead of every id it
    hands out) and the supervisor did not raise it in time.  Is it running,
    and can it write its log?"""


class SharedMemoryError(SupervisorError):
    """A system call on the shared-memory segment failed."""

    def __init__(self, name: str, what: str, errno_: int, strerror: str) -> None:
        self.name = name
        self.errno = errno_
        super().__init__(f"{what} of shared-memory segment {name!r} failed: "
                         f"[errno {errno_}] {strerror}")


class SegmentClosedError(SupervisorError):
    """The SharedState was closed in this process; attach again to use it."""


class SpawnError(SupervisorError):
    """A saga could not be spawned (not a Saga, not picklable, bad snapshot).
    Raised by ``spawn`` in the caller, never later in a worker."""


class NotRunningError(SupervisorError):
    """The supervisor is not running (not started yet, stopping, or stopped)."""


class ConnectionLostError(NotRunningError):
    """The connection to the supervisor ended (it stopped, died, or closed
    it).  `unconfirmed` lists the ids this client's spawns returned that the
    supervisor had not yet confirmed as logged: for each, ``wait()`` on the
    next supervisor (or a new client) says whether it was logged (and is
    recovered) or not (:class:`SagaNotLoggedError`: it never ran).  Every
    other id it returned is in the log."""

    def __init__(self, message: str, unconfirmed: list[int] | None = None) -> None:
        self.unconfirmed = list(unconfirmed or [])
        super().__init__(message + unconfirmed_text(self.unconfirmed))


def unconfirmed_text(ids: list[int]) -> str:
    """What a lost connection means for the spawns not confirmed logged."""
    if not ids:
        return "; every saga id spawn() returned here is in the log"
    shown = ", ".join(map(str, ids[:10])) + (f", ... ({len(ids)} in all)" if len(ids) > 10
                                             else "")
    return (f"; {len(ids)} saga id(s) spawn() returned here were not confirmed logged "
            f"({shown}): wait() on the next supervisor tells, for each, whether it was "
            "logged (then it is recovered) or not (SagaNotLoggedError: it never ran); "
            "every other id is in the log")


class SupervisorCrashedError(NotRunningError):
    """The supervisor's loop stopped on an internal error; `cause` holds it.
    What needs a running supervisor raises it, on either engine, until
    ``stop()`` is called (a :class:`NotRunningError`: it is not running)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(f"the supervisor loop crashed: {type(cause).__name__}: {cause}")


class RestartIntensityError(SupervisorError):
    """Workers died more often than `max_restarts` within `period`: the
    supervisor stopped itself (OTP-style) and failed every saga in flight."""


class HostStartError(SupervisorError):
    """The host exited in its first moments, before the supervisor could use
    it: ``start()`` raises this with its exit status and the last lines it
    wrote to stderr (fix the host's argv or the host itself)."""

    def __init__(self, argv: list[str] | None, status: int | None, stderr: str) -> None:
        self.argv = argv
        self.status = status
        self.stderr = stderr
        tail = "".join(f"\n  | {line}" for line in stderr.splitlines()) or " (nothing)"
        super().__init__(f"the host {argv!r} exited at start (status {status}); "
                         f"the last lines of its stderr:{tail}")


def _id_in(message: str, prefix: str) -> int | None:
    """The saga id an error's message starts with (an error made back from
    its message, by name, across a process boundary)."""
    head = message.removeprefix(prefix)
    digits = head[:len(head) - len(head.lstrip("0123456789"))]
    return int(digits) if digits else None


class UnknownSagaError(SupervisorError, ValueError):
    """No saga has this id: never allocated, or not spawned here and not in
    the log (purged, or another data dir's).  A ValueError too, as it was."""

    def __init__(self, message: str, saga_id: int | None = None) -> None:
        self.saga_id = saga_id if saga_id is not None else _id_in(message, "unknown saga id ")
        super().__init__(message)


def unknown_saga(saga_id: int, why: str) -> UnknownSagaError:
    """The one wording of an unknown id, on every engine and client."""
    return UnknownSagaError(f"unknown saga id {saga_id}: {why}", saga_id)


NOT_IN_LOG = "not spawned here and not in the log"
NEVER_ALLOCATED = "never allocated"


class LogError(SupervisorError):
    """The saga log cannot be used; the message names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"saga log {self.path}: {problem}")


class FencedError(LogError):
    """This supervisor, a node of a fleet on a PostgreSQL log, may no longer
    write or send: its epoch was bumped (another supervisor started under its
    node name, or took its sagas over), or it could not renew its lease in
    time (paused, or cut off from the database).  It stops; what it committed
    stays, and its sagas are recovered by whoever owns them now."""


class LogCorruptError(LogError):
    """The database file is damaged or not a SQLite database.  It is never
    recreated silently: move it aside (keep it for inspection) and restart."""


class SchemaTooNewError(LogError):
    """The database was written by a newer saga-supervisor."""


class SagaNotLoggedError(SupervisorError):
    """``spawn()`` handed out this id, but the supervisor stopped (it was
    killed, or crashed) before it logged the saga: the saga never ran and
    never will.  Spawn it again (an idempotency key makes that safe), or use
    ``spawn(..., durable=True)``, which returns only once the log has it."""

    def __init__(self, message: str, saga_id: int | None = None) -> None:
        self.saga_id = saga_id if saga_id is not None else _id_in(message, "saga ")
        super().__init__(message)


def not_logged(saga_id: int) -> SagaNotLoggedError:
    """The one wording of an id that was handed out and never logged."""
    return SagaNotLoggedError(
        f"saga {saga_id} was accepted but never logged: its supervisor stopped before "
        "writing it, so it never ran; spawn it again (with an idempotency key to be "
        "safe), or spawn with durable=True to return only once it is logged", saga_id)


class SupervisorGoneError(SupervisorError):
    """The supervisor process died (killed, or crashed) under the launcher.
    `unconfirmed`: the ids ``spawn()`` returned that it had not confirmed
    as logged (see :class:`supervisor.ConnectionLostError`)."""

    def __init__(self, message: str, unconfirmed: list[int] | None = None) -> None:
        self.unconfirmed = list(unconfirmed or [])
        super().__init__(message + unconfirmed_text(self.unconfirmed))


def ended_late(saga_id: int, timeout: float | None) -> str:
    """What a ``wait()`` that timed out says, on either engine and client."""
    return f"saga {saga_id} did not end within {timeout}s"


def stopped_before_end(suspended: bool) -> NotRunningError:
    """``wait()`` on a saga still in flight when its supervisor stopped (on
    either engine): suspended, the next start resumes it."""
    return NotRunningError("the supervisor stopped before this saga ended" +
                           (" (suspended: the next start resumes it)" if suspended else ""))
