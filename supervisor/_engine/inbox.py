"""The engine's only entry: a cross-thread queue of typed requests.

Any thread posts; the loop thread takes.  The inbox *closes under a lock*:
once :meth:`Inbox.close` returned, :meth:`Inbox.post` raises
:class:`NotRunningError`, and every request accepted before is still taken by
the loop, which gives each one an outcome (a spawn is logged and ends, a
cancel is answered).  So a caller either gets an error from ``post`` or an
outcome later: never silence.

A wake-up pipe lets the loop sleep in its selector: ``post`` writes a byte
only while the loop says it is asleep.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from supervisor.errors import NotRunningError
from supervisor.wire.codec import new_record

if TYPE_CHECKING:
    from supervisor.wire.codec import SagaSpec
    from supervisor.common.future import Future
    from supervisor.saga import Event, Saga


class Spawn(NamedTuple):
    saga_id: int
    spec: SagaSpec


class SpawnMany(NamedTuple):
    """Many spawns in one post (one lock, one wake-up).  The loop starts
    them a slice a turn: `start` is where the next slice begins."""

    saga_ids: list[int]
    specs: list[SagaSpec]
    start: int = 0
    done: Callable[[], None] | None = None  # called once the last slice started


class SpawnKeyed(NamedTuple):
    """A spawn with an idempotency key: `future` gets the id of the saga that
    holds the key (this one, or one in flight or ended before)."""

    saga_id: int
    spec: SagaSpec
    key: str
    future: Future


class Sync(NamedTuple):
    """`future` is set once every request posted before it is in the log
    (committed): ``spawn(..., durable=True)``."""

    future: Future


class Cancel(NamedTuple):
    saga_id: int
    reason: str
    future: Future


class Publish(NamedTuple):
    event: Event


class AddTrigger(NamedTuple):
    factory: Callable[[Event], Saga]
    predicate: Callable[[Event], bool]


class Stop(NamedTuple):
    drain: bool
    timeout: float
    suspend: bool = False  # leave what is still in flight for the next start


class Replay(NamedTuple):
    """A saga the log shows unfinished, to be resumed by replay."""

    saga_id: int
    spec: SagaSpec
    steps: list[tuple[int, int, str, str | None]]
    started_at: float
    inherited: bool
    kills: int = 0  # worker deaths it is suspected of: isolated when > 0
    attempt: int = 1  # the attempt its open step is at (step retries)


class Requeue(NamedTuple):
    """A saga the log shows queued (its kind's limit held it back): back
    into its kind's queue, in its logged order."""

    saga_id: int
    spec: SagaSpec
    key: str | None
    queued_at: float  # wall clock


class RequeueAll(NamedTuple):
    """The queued sagas of the log, posted at start after the replays (so
    that the replayed sagas count against the limits first)."""

    items: list[Requeue]


class Adopt(NamedTuple):
    """Sagas this node took over from dead node `node` (re-owned in the log),
    as LogStore.unfinished() rows: resumed as at a start."""

    node: str
    rows: list[tuple[int, str, float, str | None, str, str | None]]


class Grant(NamedTuple):
    """Queued sagas of fleet-limited kinds that hold a slot: start them."""

    saga_ids: list[int]


Request = (Spawn | SpawnMany | SpawnKeyed | Sync | Cancel | Publish | AddTrigger | Stop | Replay
           | RequeueAll | Adopt | Grant)


def spawn_request(saga_id: int, spec: SagaSpec) -> Spawn:
    """A :class:`Spawn` built at half the cost of calling it (every spawn)."""
    return new_record(Spawn, (saga_id, spec))


class Inbox:
    __slots__ = ("_q", "_lock", "_closed", "_why", "sleeping", "wake_r", "wake_w")

    def __init__(self) -> None:
        self._q: deque[Any] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._why = "the supervisor is not running"
        self.sleeping = False
        self.wake_r = self.wake_w = -1

    def open(self) -> None:
        """Make the wake-up pipe (at start; :meth:`close_pipe` at teardown)."""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    @property
    def closed(self) -> bool:
        return self._closed

    def post(self, item: Request) -> None:
        """Hand `item` to the loop; raises :class:`NotRunningError` once closed."""
        # `with`, not acquire() then try: a KeyboardInterrupt delivered right
        # after acquire() returned (Ctrl-C while spawning) would leave the lock
        # held, and stop() would wait for it forever in close()
        with self._lock:
            if self._closed:
                raise NotRunningError(self._why)
            self._q.append(item)
        if self.sleeping:
            self.wake()

    def post_internal(self, item: Request) -> None:
        """From the loop thread itself: accepted even when closed."""
        self._q.append(item)

    def close(self, why: str, last: Request | None = None) -> bool:
        """Refuse posts from now on (`why` is the error's message); `last` is
        accepted as the final request.  False if it was closed already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._why = why
            if last is not None:
                self._q.append(last)
        self.wake()
        return True

    def __bool__(self) -> bool:
        return bool(self._q)

    def take(self) -> Any:
        """The oldest request (loop thread; the inbox must not be empty)."""
        return self._q.popleft()

    def put_back(self, item: Request) -> None:
        """What is left of a request taken in part goes first again (loop
        thread): it is still ahead of everything posted after it, a Stop
        included."""
        self._q.appendleft(item)

    def wake(self) -> None:
        if self.wake_w < 0:
            return
        try:
            os.write(self.wake_w, b"x")
        except OSError:  # full (the loop will wake anyway) or closed at teardown
            pass

    def drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except OSError:
            pass

    def close_pipe(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wake_r = self.wake_w = -1
