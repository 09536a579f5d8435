"""Every failure mode of saga-supervisor, under one base class.

Each class names one failure and carries the fields a caller needs to act on
it; the message says what happened and what to do.
"""

from __future__ import annotations


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


class SupervisorCrashedError(SupervisorError):
    """The supervisor's loop stopped on an internal error; `cause` holds it."""

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
