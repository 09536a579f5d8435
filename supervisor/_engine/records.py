"""Plain typed records the engine's modules share (no behaviour, no I/O).

Loop thread only: nothing here is locked.
"""

from __future__ import annotations

import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from collections.abc import Callable
from types import EllipsisType
from typing import Any, Final

from supervisor.frames import FrameReader
from supervisor.protocol import MAX_BATCH
from supervisor.store.batch import Batch
from supervisor.saga import Target

# A saga's phase in the loop.
RUNNING: Final = 0
COMPENSATING: Final = 1

# Targets as the plain ints that travel in worker messages.
HOST: Final = int(Target.HOST)
TARGET_NAMES: Final = {int(t): t.name for t in Target}

# the step of a lifecycle event whose data is only its saga's name: the
# data's dict is built on publishing, and only if someone looks (a tuple of
# plain values is left out of the garbage collector's walks; one holding a
# dict is walked by every full collection while it waits for its commit)
NAME_ONLY: Final = Ellipsis
# (kind, data, saga id, step), as the bus publishes it once committed
BusEvent = tuple[str, Any, int | None, int | None | EllipsisType]


@dataclass(frozen=True)
class Settings:
    """A supervisor's configuration, checked by the facade (whose signature
    holds the defaults: they are written once, there)."""

    workers: int
    host_argv: list[str] | None
    host_fds: tuple[int, int] | None
    durability: str
    capacity: int
    retention_days: float
    start_method: str
    max_restarts: int
    restart_period: float
    restart_host: bool
    restart_backoff: float
    rss_limit: int | None
    heartbeat_timeout: float
    breaches: int
    health_interval: float
    shm_name: str | None
    start_timeout: float
    # a host frame left unfinished this long means a corrupt or stalled stream
    host_stall_timeout: float
    # serve Prometheus metrics on (metrics_host, metrics_port); None: do not
    metrics_port: int | None
    metrics_host: str
    # the clock of deadlines (saga and compensation timeouts, restart backoff):
    # time.monotonic, or a test's clock that it can advance (supervisor.testing)
    clock: Callable[[], float] | None
    # the host protocol version the supervisor speaks (2; 1 for an old host)
    host_protocol: int
    # control connections served at once (None: from RLIMIT_NOFILE, see control)
    max_clients: int | None
    # a control connection silent since it connected, or stuck in a
    # half-written request, this long is closed
    client_quiet_timeout: float
    # the log's PostgreSQL URL (None: the SQLite file in the data dir)
    log: str | None
    log_retry: float  # seconds a lost server is reconnected to before LogError
    node: str | None  # a fleet node's name (PostgreSQL log); None: one of its own
    node_lease: float  # seconds a node's lease lasts past its last renewal
    # batches of at least this many rows are committed by the writer thread
    # while the loop goes on (0: always inline)
    pipeline_rows: int = 256
    # a worker takes new sagas while it holds fewer than this many (0: every
    # saga to its shard, id % workers); see WorkerPool.for_saga
    worker_fill: int = 64


class Lifecycle:
    """The engine's state, shared by the facade and the loop:
    new -> starting -> running -> stopping -> stopped."""

    __slots__ = ("state", "error", "stop_reason", "stop_called")

    def __init__(self) -> None:
        self.state = "new"
        self.error: BaseException | None = None  # what stopped the loop, if anything
        self.stop_reason = "supervisor stopped"
        self.stop_called = False  # by its launcher (not a stop of its own)

    @property
    def running(self) -> bool:
        return self.state == "running"


class WorkerProc:
    """One worker process and its pipes, as the loop sees it."""

    __slots__ = ("index", "proc", "wfd", "rfd", "reader", "outbuf", "outbox", "in_flight",
                 "want_write", "alive", "started_at", "last_reply", "rss", "rss_breaches",
                 "hb_breaches", "retiring", "kill_reason", "psproc", "batches", "unacked",
                 "waiting_since", "quarantine")

    def __init__(self, index: int, proc: Any, wfd: int, rfd: int) -> None:
        self.index = index
        self.proc = proc
        self.wfd = wfd
        self.rfd = rfd
        self.reader = FrameReader(max_frame=MAX_BATCH)
        self.outbuf = bytearray()
        self.outbox: list[tuple[Any, ...]] = []  # messages of this turn, not yet framed
        self.in_flight = 0
        self.want_write = False
        self.alive = True
        self.started_at = time.time()
        self.last_reply = time.monotonic()
        self.rss = 0
        self.rss_breaches = 0
        self.hb_breaches = 0
        self.retiring = False
        self.kill_reason: str | None = None
        self.psproc: Any = None
        self.batches = 0  # batches written to it
        # (batch number, saga ids whose user code it runs) not yet acknowledged
        self.unacked: deque[tuple[int, list[int]]] = deque()
        self.waiting_since = 0.0  # since when `unacked` is not empty, or last shrank
        # replays of sagas suspected of killing a worker: sent one at a time
        self.quarantine: deque[tuple[Any, ...]] = deque()


class HostProc:
    """The host process (or a given pair of fds) and its pipe's counters."""

    __slots__ = ("proc", "wfd", "rfd", "reader", "outbuf", "want_write", "alive",
                 "frames_in", "frames_out", "bad_frames", "unknown_answers", "death",
                 "partial_since", "stderr", "born")

    def __init__(self, proc: subprocess.Popen[bytes] | None, wfd: int, rfd: int) -> None:
        self.proc = proc
        self.wfd = wfd
        self.rfd = rfd
        self.reader = FrameReader()
        self.outbuf = bytearray()
        self.want_write = False
        self.alive = True
        self.frames_in = 0
        self.frames_out = 0
        self.bad_frames = 0
        self.unknown_answers = 0
        self.death: str | None = None
        self.partial_since: float | None = None  # when an unfinished frame began
        self.stderr: Any = None  # the host's stderr tail (host_link.StderrTail), if ours
        self.born = time.monotonic()


class LiveSaga:
    """One saga in flight, as the loop sees it.

    What every saga uses is a slot, set here.  What only some do (a failure,
    compensation, retries, a replay, an idempotency key) is a class-level
    default, set on the instance only when it changes: it then lives in the
    instance's ``__dict__``, made at that first set.  A saga in flight is so
    17 slots for the garbage collector to walk instead of 30, and ~100 bytes
    less (with 250,000 in flight every full collection walks them all)."""

    __slots__ = ("saga_id", "name", "worker", "deadline", "timeout", "next_step", "open_step",
                 "phase", "succeeded", "has_comp", "listens", "dispatched", "needs_sent_ack",
                 "open_cmd", "born", "step_sent", "last", "__dict__")

    # -- the rare fields: read from here until set on the instance -------------------
    fail_reason: str | None = None
    # compensation: the plan still to run, the step it waits for (original
    # step, compensation step), and the error that stopped it
    comp_queue: list[tuple[int, int | None, str | None]] | None = None
    comp_wait: tuple[int, int] | None = None
    comp_failed: str | None = None
    inherited = False  # a dead worker took the claim; replay re-derives
    overdue = False  # timed out, but someone else holds its claim
    kills = 0  # worker deaths while its user code ran (see workers.py)
    cause: str | None = None  # why it failed, once it did (metrics)
    key: str | None = None  # its idempotency key, if spawned with one
    # the open step's retry policy: (attempts, backoff, max backoff, step
    # timeout), or None; the attempt it is at, since when (wall clock), and
    # whether that attempt waits out its backoff (not yet sent)
    policy: tuple[int, float, float, float | None] | None = None
    attempt = 1
    attempt_at = 0.0
    retry_wait = False

    def __init__(self, saga_id: int, name: str, worker: WorkerProc, deadline: float,
                 timeout: float, has_comp: bool, listens: frozenset[str]) -> None:
        self.saga_id = saga_id
        self.name = name
        self.worker = worker
        self.deadline = deadline
        self.timeout = timeout
        self.next_step = 1
        self.open_step = 0
        self.phase = RUNNING
        # (step, target, cmd json) of succeeded steps, kept only if it compensates
        self.succeeded: list[tuple[int, int, str]] | None = [] if has_comp else None
        self.has_comp = has_comp
        self.listens = listens
        # commands of this saga written to their target so far, and whether its
        # worker must be told of each (it may hold events back until then)
        self.dispatched = 0
        self.needs_sent_ack = bool(listens)
        self.open_cmd: tuple[int, str] | None = None  # (target, cmd json) of open_step
        self.born = deadline - timeout  # monotonic time of its spawn (metrics)
        self.step_sent = 0.0  # monotonic time its open step went out (metrics)
        self.last = False  # its open step is its last: the answer ends it here


class Turn:
    """What one loop turn produced: log rows, and the outputs that may leave
    only once those rows are committed (write-ahead)."""

    __slots__ = ("batch", "host_out", "local_out", "events", "ended", "id_limit", "after")

    def __init__(self) -> None:
        self.batch = Batch()
        # (saga id, step, command json, counts as a new dispatch)
        self.host_out: list[tuple[int, int, str, bool]] = []
        self.local_out: list[tuple[int, int, int, str]] = []  # (saga id, step, target, json)
        # bus events, as (kind, data, saga id, step): an Event is built only if
        # someone (subscriber, listener, trigger) will see it
        self.events: list[BusEvent] = []
        self.ended: list[tuple[int, str, str | None]] = []  # (saga id, state, reason)
        self.id_limit = 0  # the ids' fence may rise to this once the batch is committed
        # called once this turn's batch (and every one before) is committed:
        # durable spawns answered, "logged" acknowledgements to clients
        self.after: list[Callable[[], Any]] = []

    def command(self, saga_id: int, step: int, target: int, cmd_json: str,
                new_step: bool = False) -> None:
        """The one place a step's command is routed: to the host (a frame,
        sent once this turn is committed) or to a local handler (run then).
        `new_step`: a step's first dispatch, not a retry or a replay."""
        if target == HOST:
            self.host_out.append((saga_id, step, cmd_json, new_step))
        else:
            self.local_out.append((saga_id, step, target, cmd_json))

    def take_outputs(self) -> TurnOutputs:
        out = TurnOutputs(self.host_out, self.local_out, self.events, self.ended,
                          id_limit=self.id_limit, after=self.after)
        self.host_out, self.local_out, self.events, self.ended = [], [], [], []
        self.id_limit = 0
        self.after = []
        return out

    def take_batch(self) -> Batch:
        batch = self.batch
        self.batch = Batch()
        return batch


@dataclass(slots=True)
class TurnOutputs:
    host_out: list[tuple[int, int, str, bool]]
    local_out: list[tuple[int, int, int, str]]
    events: list[BusEvent]
    ended: list[tuple[int, str, str | None]]
    id_limit: int = 0  # the ids' fence rises to this (the batch wrote it as the mark)
    after: list[Callable[[], Any]] = field(default_factory=list)  # once committed


STAT_NAMES: Final = (
    "spawned", "completed", "failed", "bad_frames", "unknown_answers", "late_answers",
    "replayed", "reissued", "replay_failed", "reopened", "host_restarts", "worker_recycles",
    "trigger_errors", "worker_restarts", "input_errors", "subscriber_errors", "host_stalls",
    "poison_sagas", "retries", "step_timeouts", "queue_timeouts", "taken_over",
    "commits", "rows",
)


class Stats(dict[str, int]):
    """The engine's counters (a dict, so that it snapshots with ``dict()``).

    ``unknown_echo`` is the deprecated name of ``unknown_answers``."""

    _ALIASES: Final = {"unknown_echo": "unknown_answers"}

    def __init__(self) -> None:
        super().__init__((k, 0) for k in STAT_NAMES)

    def __missing__(self, key: str) -> int:
        alias = self._ALIASES.get(key)
        if alias is None:
            raise KeyError(key)
        return self[alias]
