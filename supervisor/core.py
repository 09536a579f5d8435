"""The supervisor: one loop thread that owns the log, the host pipe and the
worker pipes.

Data flow (one loop turn)::

    spawn()/cancel()/publish()  --inbox deque + wake pipe-->  +-----------+
    worker replies (pipes)  ------------------------------>   |   loop    |
    host frames (host stdout)  --------------------------->   |  thread   |
    timer heap (deadlines)  ------------------------------>   +-----------+
                                                                   |
       1. apply everything: log rows go to this turn's Batch       |
       2. ONE transaction: SagaLog.commit(batch)  (write-ahead)    v
       3. only then: host commands, bus events, outcomes, worker messages

Ownership: only this thread writes the SQLite log and the host pipe; the
shared segment is created here and unlinked here.  Workers run user code and
may claim a saga's terminal directly; every other claimant (timeout,
eviction, cancel, host failure, action failed) claims from this thread, so a
check of the claim right before a host write is exact with respect to them,
and workers hold events back until a command they issued is dispatched (see
:mod:`supervisor.worker`), so no command is ever sent after its saga's
terminal was claimed.
"""

from __future__ import annotations

import atexit
import heapq
import json
import logging
import os
import pickle
import queue
import selectors
import signal
import socket
import stat
import tempfile
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dill
import multiprocess
import multiprocess.connection

from supervisor import frames, worker as W
from supervisor._control import ControlServer, _Conn
from supervisor._ship import dump_class, encode_saga
from supervisor.errors import (
    NotRunningError,
    SegmentExistsError,
    RestartIntensityError,
    SpawnError,
    SupervisorCrashedError,
    SupervisorError,
)
from supervisor.log import Batch, LogWriter, SagaLog, open_readonly
from supervisor.saga import (
    SAGA_ACTION_FAILED,
    SAGA_COMPLETED,
    SAGA_FAILED,
    SAGA_STARTED,
    Event,
    Outcome,
    Saga,
    Target,
)
from supervisor.shm import SharedState, segment_name

log = logging.getLogger(__name__)

RUNNING, COMPENSATING = 0, 1
_TARGET_NAMES = {int(t): t.name for t in Target}
_OUTCOMES_KEPT = 100_000
_HOST_READ = 1 << 18


class _Live:
    """One saga in flight, as the loop sees it."""

    __slots__ = ("sid", "name", "worker", "deadline", "timeout", "next_step", "open_step",
                 "phase", "succeeded", "has_comp", "listens", "sent", "may_defer",
                 "fail_reason", "comp_queue", "comp_wait", "comp_failed", "open_cmd",
                 "inherited")

    def __init__(self, sid: int, name: str, worker: _Worker, deadline: float, timeout: float,
                 has_comp: bool, listens: frozenset[str]) -> None:
        self.sid = sid
        self.name = name
        self.worker = worker
        self.deadline = deadline
        self.timeout = timeout
        self.next_step = 1
        self.open_step = 0
        self.phase = RUNNING
        self.succeeded: list[tuple[int, int, str]] | None = [] if has_comp else None
        self.has_comp = has_comp
        self.listens = listens
        self.sent = 0
        self.may_defer = bool(listens)
        self.fail_reason: str | None = None
        self.comp_queue: list[tuple[int, int | None, str | None]] = []
        self.comp_wait: tuple[int, int] | None = None
        self.comp_failed: str | None = None
        self.open_cmd: tuple[int, str] | None = None  # (target, cmd json) of open_step
        self.inherited = False  # a dead worker took the claim; replay re-derives


class _Worker:
    __slots__ = ("index", "proc", "wfd", "rfd", "reader", "outbuf", "msgs", "count",
                 "want_write", "alive", "started_at", "last_reply", "rss", "rss_breaches",
                 "hb_breaches", "retiring", "kill_reason", "psproc")

    def __init__(self, index: int, proc: Any, wfd: int, rfd: int) -> None:
        self.index = index
        self.proc = proc
        self.wfd = wfd
        self.rfd = rfd
        self.reader = frames.FrameReader(max_frame=1 << 30)
        self.outbuf = bytearray()
        self.msgs: list[Any] = []
        self.count = 0
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


class _Host:
    __slots__ = ("proc", "wfd", "rfd", "reader", "outbuf", "want_write", "alive",
                 "frames_in", "frames_out", "bad_frames", "unknown", "death")

    def __init__(self, proc: subprocess.Popen[bytes] | None, wfd: int, rfd: int) -> None:
        self.proc = proc
        self.wfd = wfd
        self.rfd = rfd
        self.reader = frames.FrameReader()
        self.outbuf = bytearray()
        self.want_write = False
        self.alive = True
        self.frames_in = 0
        self.frames_out = 0
        self.bad_frames = 0
        self.unknown = 0
        self.death: str | None = None


def _stop_host_process(h: _Host, grace: float) -> None:
    """Close the pipes of a host we started (it exits on stdin EOF), give it
    `grace` seconds, then SIGTERM, then SIGKILL.  A host on given fds is not
    ours to stop."""
    if h.proc is None:
        return
    for f in (h.proc.stdin, h.proc.stdout):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            h.proc.send_signal(sig)
        try:
            h.proc.wait(grace if sig is None else 2.0)
            return
        except subprocess.TimeoutExpired:
            pass


class Subscription:
    """A queue of bus events (lifecycle and domain), in version order."""

    def __init__(self, owner: Supervisor) -> None:
        self._q: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._owner = owner
        self.closed = False

    def get(self, timeout: float | None = None) -> Event:
        """The next event; raises ``queue.Empty`` after `timeout` seconds and
        :class:`NotRunningError` once the supervisor stopped and all was read."""
        item = self._q.get(timeout=timeout)
        if item is None:
            self._q.put(None)
            raise NotRunningError("the supervisor stopped; no more events")
        return item

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                yield self.get()
            except NotRunningError:
                return

    def close(self) -> None:
        self.closed = True
        self._owner._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Future:
    __slots__ = ("_ev", "value", "error")

    def __init__(self) -> None:
        self._ev = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self._ev.set()

    def result(self, timeout: float | None) -> Any:
        if not self._ev.wait(timeout):
            raise TimeoutError("the supervisor loop did not answer in time")
        if self.error is not None:
            raise self.error
        return self.value


Handler = Callable[[Any, int, int], Any]


class Supervisor(ControlServer):
    """Runs sagas in worker processes with a durable log and a host pipe.

    ``Supervisor(data_dir, workers=2, host=[...argv...])`` then ``start()``
    (or ``with``).  `host` is the host program's argv (started as a
    subprocess), or ``host_fds=(write_fd, read_fd)`` for an already-open pair.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        workers: int = 2,
        host: list[str] | None = None,
        *,
        host_fds: tuple[int, int] | None = None,
        durability: str = "normal",
        capacity: int = 65536,
        retention_days: float = 7.0,
        start_method: str = "spawn",
        max_restarts: int = 5,
        restart_period: float = 30.0,
        restart_host: bool = True,
        restart_backoff: float = 0.05,
        rss_limit: int | None = None,
        heartbeat_timeout: float = 30.0,
        breaches: int = 3,
        health_interval: float = 1.0,
        shm_name: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
            raise ValueError(f"workers must be an int from 1 to 256, got {workers!r}")
        if host is not None and (not isinstance(host, (list, tuple)) or not host
                                 or not all(isinstance(a, str) for a in host)):
            raise TypeError(f"host must be a non-empty list of str (an argv), got {host!r}")
        if host is not None and host_fds is not None:
            raise ValueError("give either host (an argv) or host_fds, not both")
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
        if start_method not in ("spawn", "forkserver", "fork"):
            raise ValueError(f"start_method must be spawn, forkserver or fork, "
                             f"got {start_method!r}")
        if not isinstance(retention_days, (int, float)) or retention_days <= 0:
            raise ValueError(f"retention_days must be > 0, got {retention_days!r}")
        self.data_dir = Path(data_dir)
        self.n_workers = workers
        self.host_argv = list(host) if host is not None else None
        self.host_fds = host_fds
        self.durability = durability
        self.capacity = capacity
        self.retention_days = float(retention_days)
        self.start_method = start_method
        self.max_restarts = max_restarts
        self.restart_period = restart_period
        self.restart_host = restart_host
        self.restart_backoff = float(restart_backoff)
        if rss_limit is not None and (not isinstance(rss_limit, int) or rss_limit <= 0):
            raise ValueError(f"rss_limit must be a positive number of bytes, got {rss_limit!r}")
        if not heartbeat_timeout > 0 or not health_interval > 0 or breaches < 1:
            raise ValueError("heartbeat_timeout and health_interval must be > 0, breaches >= 1")
        self.rss_limit = rss_limit
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.breaches = int(breaches)
        self._host_restarts: deque[float] = deque()
        self._shm_name = shm_name
        self.start_timeout = start_timeout
        self.health_interval = float(health_interval)
        # batches of at least this many rows are committed by the writer thread
        # while the loop goes on (0: always inline)
        self.pipeline_rows = 256

        self._state = "new"  # new -> running -> stopping -> stopped
        self._lock = threading.Lock()
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._sleeping = False
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None

        # class shipping (spawn may run on any thread)
        self._class_ids: dict[type, int] = {}
        self._class_blobs: dict[int, bytes] = {}
        self._shipped: set[int] = set()

        # outcomes and waiters (guarded by _lock)
        self._pending: set[int] = set()
        self._outcomes: dict[int, tuple[int, str, str | None]] = {}
        self._outcome_order: deque[int] = deque()
        self._waiters: dict[int, list[_Future]] = {}
        self._subs: list[Subscription] = []

        # loop-thread state
        self._live: dict[int, _Live] = {}
        self._by_kind: dict[str, set[int]] = {}
        self._listeners: dict[str, set[int]] = {}
        self._timers: list[tuple[float, int]] = []
        self._batch = Batch()
        # (saga id, step, command json, counts as a new dispatch for `sent`)
        self._host_out: list[tuple[int, int, str, bool]] = []
        self._local_out: list[tuple[int, int, int, str]] = []
        # bus events of this turn, as (kind, data, saga id, step): an Event is
        # built only if someone (subscriber, listener, trigger) will see it
        self._emit: list[tuple[str, Any, int | None, int | None]] = []
        self._ended: list[tuple[int, str, str | None]] = []  # (saga id, state, reason)
        self._version = 0
        self._handlers: dict[Target, Handler] = {}
        self._kinds: dict[str, tuple[Callable[[dict[str, Any]], Saga] | None, bool]] = {}
        self._triggers: list[tuple[Callable[[Event], Saga], Callable[[Event], bool]]] = []
        self._restarts: deque[float] = deque()
        # (when, worker index, dead worker, why): replacements waiting out a backoff
        self._later: list[tuple[float, int, _Worker, str]] = []
        self._retired: list[_Worker] = []
        self._drain_deadline: float | None = None
        self._stop_reason = "supervisor stopped"
        self.stats = {"spawned": 0, "completed": 0, "failed": 0, "bad_frames": 0,
                      "unknown_echo": 0, "late_answers": 0, "replayed": 0, "reissued": 0,
                      "replay_failed": 0, "reopened": 0, "host_restarts": 0, "worker_recycles": 0, "trigger_errors": 0, "worker_restarts": 0,
                      "commits": 0, "rows": 0}

        self._writer: LogWriter | None = None
        self._seq = 0  # batches handed to the writer
        self._held: deque[tuple[int, tuple[Any, ...]]] = deque()  # outputs awaiting a commit
        self._listener: socket.socket | None = None
        self._control_path: Path | None = None
        self._conns: list[_Conn] = []
        self._remote_waiters: dict[int, list[tuple[_Conn, int]]] = {}
        self._log: SagaLog | None = None
        self._shared: SharedState | None = None
        self._workers: list[_Worker] = []
        self._host: _Host | None = None
        self._sel: selectors.BaseSelector | None = None
        self._mp: Any = None

    # ------------------------------------------------------------------ API

    @property
    def shm_name(self) -> str:
        if self._shared is None:
            raise NotRunningError("the supervisor has not started")
        return self._shared.name

    @property
    def db_path(self) -> Path:
        return self.data_dir / "db" / "sagas.db"

    def start(self) -> Supervisor:
        """Open the log, create the shared segment, start workers, the host and
        the loop.  On any error everything started so far is torn down."""
        if self._state != "new":
            raise NotRunningError(f"start() called on a supervisor that is {self._state}")
        self._state = "starting"
        try:
            self._start()
        except BaseException:
            self._teardown()
            self._state = "stopped"
            raise
        self._state = "running"
        assert self._thread is not None
        self._thread.start()
        atexit.register(self._atexit)
        return self

    def _atexit(self) -> None:
        # the interpreter is exiting with the supervisor still running (a
        # script that forgot stop(), or an exception): stop it cleanly so no
        # worker, host or segment outlives us
        if self._state in ("running", "stopping"):
            self.stop()

    def _start(self) -> None:
        self._log = SagaLog(self.db_path, self.durability)
        first_id = self._log.max_saga_id() + 1
        # the segment doubles as the data dir's lock: nothing below writes the
        # log unless no other live supervisor owns this data dir
        self._shared = self._create_segment(first_id)
        self._log.purge(self.retention_days)
        self._recover()
        self._mp = multiprocess.get_context(self.start_method)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        if self.pipeline_rows:
            self._writer = LogWriter(self._log, self._wake_w)
        for i in range(self.n_workers):
            self._workers.append(self._start_worker(i))
        self._await_ready(self._workers, self.start_timeout)
        if self.host_argv is not None or self.host_fds is not None:
            self._host = self._start_host()
        self._open_control()
        self._thread = threading.Thread(target=self._run, name="saga-supervisor-loop",
                                        daemon=True)

    def _create_segment(self, first_id: int) -> SharedState:
        """Create this data dir's segment.  One left by a supervisor that was
        killed (its creator pid and start time no longer name a live process)
        is replaced; one whose creator still runs means another supervisor
        owns this data dir, which is refused."""
        name = self._shm_name or segment_name(self.data_dir)
        for _ in range(2):
            try:
                return SharedState.create(capacity=self.capacity, name=name,
                                          first_id=first_id)
            except SegmentExistsError:
                pass
            try:
                old = SharedState.attach(name, timeout=0.2)
            except SupervisorError as exc:  # not ours / half-written: stale either way
                log.warning("replacing unusable shared segment %r: %s", name, exc)
            else:
                alive, pid = old.creator_alive(), old.creator_pid
                old.close()
                if alive:
                    raise SupervisorError(
                        f"another supervisor (pid {pid}) is running on data dir "
                        f"{self.data_dir}: stop it first, or use another data dir")
                log.warning("replacing shared segment %r left by supervisor pid %d, "
                            "which is gone", name, pid)
            SharedState.remove(name)
        raise SupervisorError(f"cannot create shared segment {name!r}")

    def register_kind(self, kind: type[Saga] | str,
                      factory: Callable[[dict[str, Any]], Saga] | None = None,
                      replay: bool = True) -> None:
        """Say how to rebuild a saga of `kind` from its logged input snapshot,
        so that it is resumed by replay after a supervisor restart or a worker
        crash.  `factory(snapshot)` defaults to ``cls(**snapshot)``.  With
        ``replay=False`` such sagas are failed instead ("supervisor restarted
        while saga was running" / "worker crashed")."""
        if isinstance(kind, type) and issubclass(kind, Saga):
            name = kind.name or kind.__name__
            if factory is None:
                cls = kind
                factory = lambda snap: cls(**snap)  # noqa: E731
        elif isinstance(kind, str):
            name = kind
        else:
            raise TypeError(f"kind must be a Saga subclass or a kind name, got {kind!r}")
        if replay and factory is None:
            raise ValueError(f"kind {name!r}: replay needs a factory(snapshot) -> Saga")
        self._kinds = {**self._kinds, name: (factory, bool(replay))}

    def _rebuild_item(self, sid: int, name: str, input_json: str | None
                      ) -> tuple[Any, ...] | str:
        """(ship item) for a saga to replay, or the reason it cannot be."""
        kind = self._kinds.get(name)
        if kind is None or not kind[1] or kind[0] is None:
            return "not replayable"
        try:
            saga = kind[0](json.loads(input_json or "{}"))
            item = self._prepare(saga)
        except Exception as exc:
            return (f"cannot rebuild the saga from its input snapshot: "
                    f"{type(exc).__name__}: {exc}")
        if item[2] != name:
            return f"the factory for kind {name!r} built a saga of kind {item[2]!r}"
        return item

    def _log_steps(self, sid: int) -> list[tuple[int, int, str, str | None]] | str:
        assert self._log is not None
        steps: list[tuple[int, int, str, str | None]] = []
        for st in self._log.steps(sid):
            target = {t.name: int(t) for t in Target}.get(st["target"])
            if target is None or st["state"] not in ("succeeded", "pending"):
                return f"step {st['step_index']} is {st['state']}: cannot replay"
            steps.append((int(st["step_index"]), target, str(st["cmd_json"]),
                          st["output_json"] if st["state"] == "succeeded" else None))
        if any(s[3] is None for s in steps[:-1]):
            return "a step before the last is still pending: cannot replay"
        return steps

    def _recover(self) -> None:
        """Sagas the log shows unfinished: resume by replay where their kind is
        registered for it, else fail them (closing their open steps).  Nothing
        is written until a replay has an outcome, so a crash during recovery
        leaves the log as it was: recovery is idempotent."""
        assert self._log is not None and self._shared is not None
        stale = self._log.unfinished()
        if not stale:
            return
        now = time.time()
        batch = Batch()
        replays = 0
        for sid, name, started, input_json, state in stale:
            if state == "compensating":
                batch.saga_ends.append(("failed_compensation", now,
                                        "supervisor restarted during compensation", sid))
                continue
            item = self._rebuild_item(sid, name, input_json)
            steps = self._log_steps(sid) if not isinstance(item, str) else item
            if isinstance(item, str) or isinstance(steps, str):
                why = "supervisor restarted while saga was running"
                if item != "not replayable":
                    why += f"; {steps}"
                    self.stats["replay_failed"] += 1
                batch.saga_ends.append(("failed", now, why, sid))
                continue
            self._shared.register(sid)
            with self._lock:
                self._pending.add(sid)
            self._inbox.append(("replay", sid, item, steps, started, False))
            replays += 1
        if batch:
            self._log.commit(batch)
        log.warning("recovery: %d saga(s) left unfinished by a previous supervisor: %d "
                    "resumed by replay, %d failed", len(stale), replays, len(stale) - replays)

    def _do_replay(self, sid: int, item: tuple[Any, ...],
                   steps: list[tuple[int, int, str, str | None]], started_at: float,
                   inherited: bool) -> None:
        cid, state, name, timeout, _snapshot, listens, has_comp = item
        self._ship_class(cid)
        remaining = timeout - max(0.0, time.time() - started_at)
        deadline = time.monotonic() + max(0.0, remaining)
        w = self._workers[sid % len(self._workers)]
        L = _Live(sid, name, w, deadline, timeout, has_comp, listens)
        L.may_defer = True
        L.inherited = inherited
        for index, target, cmd_json, output in steps:
            if output is None:
                L.open_step = index
                L.open_cmd = (target, cmd_json)
            elif L.succeeded is not None:
                L.succeeded.append((index, target, cmd_json))
        L.next_step = steps[-1][0] + 1 if steps else 1
        L.sent = len(steps)
        self._index(L)
        heapq.heappush(self._timers, (deadline, sid))
        w.count += 1
        w.msgs.append((W.REPLAY, sid, cid, state, name, steps, inherited))
        self.stats["replayed"] += 1

    def _ship_class(self, cid: int) -> None:
        if cid not in self._shipped:
            self._shipped.add(cid)
            blob = self._class_blobs[cid]
            for w in self._workers:
                w.msgs.append((W.CLS, cid, blob))

    def _index(self, L: _Live) -> None:
        sid = L.sid
        self._live[sid] = L
        kind_set = self._by_kind.get(L.name)
        if kind_set is None:
            self._by_kind[L.name] = {sid}
        else:
            kind_set.add(sid)
        for k in L.listens:
            self._listeners.setdefault(k, set()).add(sid)

    def _forget(self, L: _Live) -> None:
        sid = L.sid
        del self._live[sid]
        ks = self._by_kind.get(L.name)
        if ks is not None:
            ks.discard(sid)
            if not ks:
                del self._by_kind[L.name]
        for k in L.listens:
            ls = self._listeners.get(k)
            if ls is not None:
                ls.discard(sid)
        L.worker.count -= 1

    def __enter__(self) -> Supervisor:
        return self.start() if self._state == "new" else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(self, saga: Saga) -> int:
        """Start `saga`; returns its id at once (callable from any thread).
        Raises :class:`SpawnError` if the saga cannot be shipped to a worker."""
        if self._state != "running":
            raise NotRunningError(f"cannot spawn: the supervisor is {self._state}")
        item = self._prepare(saga)
        assert self._shared is not None
        sid = self._shared.acquire()
        with self._lock:
            self._pending.add(sid)
        self._post(("spawn", sid, item, None))
        return sid

    def _prepare(self, saga: Saga) -> tuple[Any, ...]:
        sh = encode_saga(saga)
        cid = self._class_ids.get(sh.cls)
        if cid is None:
            cid = self._register_class(sh.cls, None)
        return (cid, sh.state, sh.name, sh.timeout, sh.snapshot_json, sh.listens, sh.has_comp)

    def _register_class(self, cls: type, blob: bytes | None) -> int:
        with self._lock:
            cid = self._class_ids.get(cls)
            if cid is not None:
                return cid
            if blob is None:
                blob = dump_class(cls)
            cid = len(self._class_blobs) + 1
            self._class_blobs[cid] = blob
            self._class_ids[cls] = cid
            return cid

    def wait(self, saga_id: int, timeout: float | None = None) -> Outcome:
        """Block until `saga_id` has its terminal outcome (from any thread)."""
        if isinstance(saga_id, bool) or not isinstance(saga_id, int):
            raise TypeError(f"saga id must be an int, got {type(saga_id).__name__}: {saga_id!r}")
        fut: _Future | None = None
        with self._lock:
            out = self._outcomes.get(saga_id)
            if out is not None:
                return Outcome(*out)
            if saga_id in self._pending:
                fut = _Future()
                self._waiters.setdefault(saga_id, []).append(fut)
        if fut is not None:
            if self._crash is not None:
                raise SupervisorCrashedError(self._crash)
            try:
                return fut.result(timeout)  # type: ignore[no-any-return]
            except TimeoutError:
                raise TimeoutError(f"saga {saga_id} did not end within {timeout}s") from None
        found = self._outcome_from_log(saga_id)
        if found is None:
            raise ValueError(f"unknown saga id {saga_id}: not spawned here and not in the log")
        return found

    def _outcome_from_log(self, saga_id: int) -> Outcome | None:
        if not self.db_path.exists():
            return None
        conn = open_readonly(self.db_path)
        try:
            rows = conn.execute("SELECT state, failure_reason FROM saga WHERE saga_id = ?",
                                (saga_id,)).fetchall()
        finally:
            conn.close()
        if not rows:
            return None
        state, reason = rows[0]
        if state in ("running", "compensating"):
            raise NotRunningError(f"saga {saga_id} is {state} in the log but not in flight in "
                                  "this supervisor")
        return Outcome(saga_id, str(state), None if reason is None else str(reason))

    def cancel(self, saga_id: int, reason: str = "cancelled", timeout: float = 10.0) -> bool:
        """Fail `saga_id` with `reason` if it is still in flight.  True if this
        call decided its terminal, False if it had already ended."""
        if isinstance(saga_id, bool) or not isinstance(saga_id, int):
            raise TypeError(f"saga id must be an int, got {type(saga_id).__name__}: {saga_id!r}")
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__}")
        if self._state != "running":
            raise NotRunningError(f"cannot cancel: the supervisor is {self._state}")
        assert self._shared is not None
        if saga_id <= 0 or saga_id >= self._shared.peek_next_id():
            raise ValueError(f"unknown saga id {saga_id}: never allocated")
        fut = _Future()
        self._post(("cancel", saga_id, reason, fut))
        return bool(fut.result(timeout))

    def publish(self, event: Event) -> None:
        """Put a domain event on the bus (from any thread): offered to sagas
        listening to its kind and to triggers."""
        if not isinstance(event, Event):
            raise TypeError(f"publish() takes an Event, got {type(event).__name__}")
        if not isinstance(event.kind, str):
            raise TypeError(f"event kind must be a str, got {type(event.kind).__name__}")
        try:  # it travels to workers and clients pickled: refuse it here, not in the loop
            pickle.dumps(event.data, protocol=5)
        except Exception as exc:
            raise TypeError(f"event data must be picklable: {type(exc).__name__}: {exc}"
                            ) from None
        if self._state != "running":
            raise NotRunningError(f"cannot publish: the supervisor is {self._state}")
        self._post(("publish", event))

    def subscribe(self) -> Subscription:
        """Receive every bus event from now on (lifecycle and domain)."""
        sub = Subscription(self)
        with self._lock:
            self._subs = self._subs + [sub]
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]

    def add_trigger(self, saga_factory: Callable[[Event], Saga],
                    predicate: Callable[[Event], bool]) -> None:
        """Spawn ``saga_factory(event)`` for every bus event matching
        `predicate`; an in-flight saga of the same kind is evicted first."""
        if not callable(saga_factory) or not callable(predicate):
            raise TypeError("add_trigger(saga_factory, predicate) takes two callables")
        self._post(("trigger", saga_factory, predicate)) if self._state == "running" \
            else self._triggers.append((saga_factory, predicate))

    def register_handler(self, target: Target, fn: Handler) -> None:
        """Handle LAUNCHER_SELF or SRV commands in the supervisor:
        ``fn(command, saga_id, step)`` returns the echo's data (or raises)."""
        if target not in (Target.LAUNCHER_SELF, Target.SRV):
            raise ValueError(f"handlers are for LAUNCHER_SELF or SRV, not {target!r}")
        if not callable(fn):
            raise TypeError("handler must be callable")
        self._handlers = {**self._handlers, Target(target): fn}

    def stop(self, drain: bool = False, timeout: float = 5.0) -> None:
        """Stop: with `drain`, let sagas in flight finish for up to `timeout`
        seconds; then fail the rest with "supervisor stopped".  Closes the log,
        stops workers and host, unlinks the shared segment.  Idempotent."""
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        if self._state == "running":
            self._state = "stopping"
            self._post(("stop", drain, timeout))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout + 30)
            if self._thread.is_alive():  # pragma: no cover - loop wedged in user code
                log.error("supervisor loop did not stop in time; tearing down anyway")
        if self._thread is None or not self._thread.is_alive():
            self._teardown()
        self._state = "stopped"
        atexit.unregister(self._atexit)

    def serve(self, drain_timeout: float = 10.0) -> int:
        """Run in the foreground until SIGTERM or SIGINT (main thread only),
        then stop, draining in-flight sagas for up to `drain_timeout` seconds.
        Returns 0, or 1 if the supervisor stopped on an error."""
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            log.warning("signal %d: stopping (drain up to %ss)", signum, drain_timeout)
            stop.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self._state == "new":
                self.start()
            while not stop.wait(0.2):
                if self._state != "running":
                    break
            self.stop(drain=True, timeout=drain_timeout)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return 1 if self._crash is not None else 0

    def in_flight(self) -> int:
        return len(self._live)

    def health(self) -> dict[str, Any]:
        """A snapshot of the supervisor's processes and counters."""
        from supervisor.health import snapshot

        return snapshot(self)

    # ------------------------------------------------------------- plumbing

    def _post(self, item: tuple[Any, ...]) -> None:
        self._inbox.append(item)
        if self._sleeping:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def _start_worker(self, index: int) -> _Worker:
        assert self._shared is not None and self._sel is not None
        in_r, in_w = self._mp.Pipe(duplex=False)
        out_r, out_w = self._mp.Pipe(duplex=False)
        proc = self._mp.Process(target=W.worker_main, name=f"saga-worker-{index}",
                                args=(index, self._shared.name, in_r, out_w), daemon=True)
        proc.start()
        in_r.close()
        out_w.close()
        wfd = os.dup(in_w.fileno())
        rfd = os.dup(out_r.fileno())
        in_w.close()
        out_r.close()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        w = _Worker(index, proc, wfd, rfd)
        self._sel.register(rfd, selectors.EVENT_READ, ("worker", w))
        self._sel.register(proc.sentinel, selectors.EVENT_READ, ("sentinel", w))
        for cid in sorted(self._shipped):
            w.msgs.append((W.CLS, cid, self._class_blobs[cid]))
        return w

    def _await_ready(self, workers: list[_Worker], timeout: float) -> None:
        """Block until every worker has imported and said READY; a worker that
        dies first is a clear error (e.g. a __main__ without the
        ``if __name__ == "__main__"`` guard under spawn)."""
        deadline = time.monotonic() + timeout
        waiting = {w.rfd: w for w in workers}
        sentinels = {w.proc.sentinel: w for w in workers}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SupervisorError(f"{len(waiting)} worker(s) not ready after {timeout}s")
            ready = multiprocess.connection.wait(list(waiting) + list(sentinels), left)
            for fd in ready:
                if fd in waiting:
                    w = waiting[fd]
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if data:
                        bodies = w.reader.feed(data)
                        if any(m[0] == W.READY for b in bodies for m in pickle.loads(b)):
                            del waiting[fd]
                            del sentinels[w.proc.sentinel]
                        continue
                w = waiting.get(fd) or sentinels[fd]
                w.proc.join(5.0)
                raise SupervisorError(
                    f"worker {w.index} exited during start-up (exit code {w.proc.exitcode}); "
                    "its stderr says why. Under the spawn/forkserver start methods, a "
                    "launcher script must start the supervisor under "
                    "`if __name__ == \"__main__\":`")

    def _start_host(self) -> _Host:
        assert self._sel is not None
        if self.host_fds is not None:
            wfd, rfd = self.host_fds
            h = _Host(None, wfd, rfd)
        else:
            assert self.host_argv is not None
            try:
                proc = subprocess.Popen(self.host_argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0, close_fds=True)
            except OSError as exc:
                raise SupervisorError(f"cannot start the host {self.host_argv!r}: {exc}"
                                      ) from exc
            assert proc.stdin is not None and proc.stdout is not None
            h = _Host(proc, proc.stdin.fileno(), proc.stdout.fileno())
        os.set_blocking(h.wfd, False)
        os.set_blocking(h.rfd, False)
        self._sel.register(h.rfd, selectors.EVENT_READ, ("host", h))
        return h

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug in the loop: be loud, never hang callers
            log.exception("supervisor loop crashed")
            self._crash = exc
            self._state = "stopping"
            try:
                self._fail_all(f"supervisor crashed: {type(exc).__name__}: {exc}")
                self._commit_and_flush()
                self._drain_log()
            except BaseException:
                log.exception("could not fail sagas after the crash")
        finally:
            self._teardown()
            self._state = "stopped"
            with self._lock:
                waiters = self._waiters
                self._waiters = {}
                subs = self._subs
            err = SupervisorCrashedError(self._crash) if self._crash else \
                NotRunningError("the supervisor stopped before this saga ended")
            for futs in waiters.values():
                for f in futs:
                    f.set(error=err)
            for s in subs:
                s._q.put(None)
            while self._inbox:
                item = self._inbox.popleft()
                if item[0] == "cancel":
                    item[3].set(False)

    def _loop(self) -> None:
        sel = self._sel
        assert sel is not None
        last_purge = last_health = time.monotonic()
        self._write_health()
        stopping = False
        while True:
            timeout: float | None = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            if self._later:
                wake = max(0.0, self._later[0][0] - time.monotonic())
                timeout = wake if timeout is None else min(timeout, wake)
            if self._drain_deadline is not None:
                timeout = 0.05 if timeout is None else min(timeout, 0.05)
            if timeout is None or timeout > 1.0:
                timeout = 1.0
            self._sleeping = True
            if self._inbox:
                timeout = 0.0
            ready = sel.select(timeout)
            self._sleeping = False
            dead: list[_Worker] = []
            for key, _mask in ready:
                tag, obj = key.data
                if tag == "worker":
                    self._read_worker(obj)
                elif tag == "host":
                    self._read_host(obj)
                elif tag == "sentinel":
                    dead.append(obj)
                elif tag == "hostw":
                    self._write_host(obj)
                elif tag == "workerw":
                    self._write_worker(obj)
                elif tag == "conn":
                    if _mask & selectors.EVENT_WRITE:
                        self._flush_conn(obj)
                    if _mask & selectors.EVENT_READ:
                        self._read_conn(obj)
                elif tag == "accept":
                    self._accept()
                elif tag == "wake":
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
            inbox = self._inbox
            while inbox:
                item = inbox.popleft()
                kind = item[0]
                if kind == "spawn":
                    self._do_spawn(item[1], item[2], item[3])
                elif kind == "cancel":
                    self._do_cancel(item[1], item[2], item[3])
                elif kind == "replay":
                    self._do_replay(item[1], item[2], item[3], item[4], item[5])
                elif kind == "publish":
                    ev = item[1]
                    self._emit.append((ev.kind, ev.data, ev.saga_id, ev.step))
                elif kind == "trigger":
                    self._triggers.append((item[1], item[2]))
                elif kind == "stop":
                    stopping = True
                    drain, t = item[1], item[2]
                    self._drain_deadline = time.monotonic() + (t if drain else 0.0)
            for w in dead:
                self._worker_died(w)
            if self._later and self._later[0][0] <= time.monotonic():
                self._restart_later()
            if self._timers and self._timers[0][0] <= time.monotonic():
                self._expire()
            if stopping and self._drain_deadline is not None and (
                    not self._live or time.monotonic() >= self._drain_deadline):
                self._fail_all(self._stop_reason)
                self._commit_and_flush()
                self._drain_log()
                return
            self._commit_and_flush()
            if time.monotonic() - last_health >= self.health_interval:
                last_health = time.monotonic()
                self._check_workers()
                self._write_health()
            if time.monotonic() - last_purge > 3600:
                last_purge = time.monotonic()
                assert self._log is not None
                self._drain_log()
                self._log.purge(self.retention_days)

    # -- spawn / end ---------------------------------------------------------

    def _do_spawn(self, sid: int, item: tuple[Any, ...], trigger_event: Event | None) -> None:
        cid, state, name, timeout, snapshot_json, listens, has_comp = item
        self._ship_class(cid)
        now = time.time()
        deadline = time.monotonic() + timeout
        w = self._workers[sid % len(self._workers)]
        L = _Live(sid, name, w, deadline, timeout, has_comp, listens)
        self._index(L)
        heapq.heappush(self._timers, (deadline, sid))
        self._batch.sagas.append((sid, name, now, snapshot_json))
        w.count += 1
        w.msgs.append((W.START, sid, cid, state, name))
        if trigger_event is not None:
            L.may_defer = True
            w.msgs.append(self._event_msg(L, trigger_event))
        self._emit.append((SAGA_STARTED, {"name": name}, sid, None))
        self.stats["spawned"] += 1

    def _end(self, L: _Live, state: str, reason: str | None) -> None:
        sid = L.sid
        self._batch.saga_ends.append((state, time.time(), reason, sid))
        self._forget(L)
        if state != "completed":
            L.worker.msgs.append((W.DROP, sid))
            self.stats["failed"] += 1
            data = {"name": L.name, "reason": reason, "state": state}
            self._emit.append((SAGA_FAILED, data, sid, None))
        else:
            self.stats["completed"] += 1
            self._emit.append((SAGA_COMPLETED, {"name": L.name}, sid, None))
        self._ended.append((sid, state, reason))

    def _fail(self, L: _Live, reason: str, claimed: bool = False,
              consumed: bytes | str | None = None) -> bool:
        """Fail a saga; unless `claimed` (a worker won already), take the claim
        first and do nothing if we lose it."""
        assert self._shared is not None
        if not claimed and not self._shared.claim(L.sid):
            return False
        now = time.time()
        if L.open_step:
            if consumed is not None:
                # on_event consumed the awaited event, then chose to fail: the
                # step itself finished (and is compensated like the others)
                self._close_step(L, consumed, now)
            else:  # still awaiting its echo: closed as failed with the reason
                self._batch.step_ends.append(("failed", now, None, reason, L.sid, L.open_step))
                L.open_step = 0
                L.open_cmd = None
        if L.succeeded and self._state == "running":
            L.phase = COMPENSATING
            L.fail_reason = reason
            self._batch.saga_states.append(("compensating", L.sid))
            L.deadline = time.monotonic() + L.timeout
            heapq.heappush(self._timers, (L.deadline, L.sid))
            L.worker.msgs.append((W.COMP, L.sid, list(reversed(L.succeeded))))
            return True
        self._end(L, "failed", reason)
        return True

    def _fail_all(self, reason: str) -> None:
        assert self._shared is not None
        for L in list(self._live.values()):
            if L.phase == COMPENSATING:
                self._end(L, "failed_compensation", f"{L.fail_reason}; compensation "
                          f"interrupted: {reason}")
            elif not self._fail(L, reason):
                # claimed elsewhere (a worker) but not reported: the claim holder
                # is still working or gone; the log must still get an outcome
                self._end(L, "failed", f"{reason} (terminal claimed but not reported)")

    def _do_cancel(self, sid: int, reason: str, fut: _Future) -> None:
        L = self._live.get(sid)
        if L is None or L.phase != RUNNING:
            fut.set(False)
            return
        fut.set(self._fail(L, f"cancelled: {reason}"))

    def _expire(self) -> None:
        now = time.monotonic()
        timers = self._timers
        live = self._live
        while timers and timers[0][0] <= now:
            deadline, sid = heapq.heappop(timers)
            L = live.get(sid)
            if L is None or L.deadline != deadline:
                continue  # ended already, or re-armed for compensation
            if L.phase == COMPENSATING:
                self._end(L, "failed_compensation",
                          f"{L.fail_reason}; compensation timeout")
            else:
                self._fail(L, "saga timeout")

    # -- worker replies ---------------------------------------------------------

    def _read_worker(self, w: _Worker) -> None:
        try:
            while True:
                data = os.read(w.rfd, 1 << 20)
                if not data:
                    return  # EOF: the sentinel reports the death
                w.last_reply = time.monotonic()
                for body in w.reader.feed(data):
                    self._apply(pickle.loads(body))
                if len(data) < (1 << 20):
                    return
        except BlockingIOError:
            return

    def _apply(self, replies: list[Any]) -> None:
        live = self._live
        shared = self._shared
        assert shared is not None
        batch = self._batch
        for r in replies:
            op = r[0]
            if op == W.ACT:
                L = live.get(r[1])
                if L is not None:
                    self._apply_act(L, r[2], r[3], r[4])
            elif op == W.REPLAYED:
                L = live.get(r[1])
                if L is not None:
                    self._replayed(L, r[2], r[3], r[4])
            elif op == W.HEARTBEAT or op == W.READY:
                continue
            elif op == W.COMPS:
                L = live.get(r[1])
                if L is None or L.phase != COMPENSATING:
                    continue
                L.comp_queue = list(r[2])
                if r[3]:
                    L.comp_failed = r[3]
                self._next_compensation(L)

    def _apply_act(self, L: _Live, code: int, arg: Any, consumed: bytes | str | None) -> None:
        sid = L.sid
        if code == W.A_CMD:
            assert self._shared is not None
            if L.phase != RUNNING or self._shared.is_claimed(sid):
                return  # no work after the end
            now = time.time()
            if consumed is not None and L.open_step:
                self._close_step(L, consumed, now)
            target, cmd_json, step_name = arg
            step = L.next_step
            L.next_step = step + 1
            L.open_step = step
            L.open_cmd = (target, cmd_json)
            self._batch.steps.append((sid, step, step_name, cmd_json, _TARGET_NAMES[target], now))
            if target == 1:
                self._host_out.append((sid, step, cmd_json, True))
            else:
                self._local_out.append((sid, step, target, cmd_json))
        elif code == W.A_DONE:
            if consumed is not None and L.open_step:
                self._close_step(L, consumed, time.time())
            self._end(L, "completed", None)
        elif code == W.A_FAILED:
            self._fail(L, arg, claimed=True, consumed=consumed)

    def _replayed(self, L: _Live, code: int, arg: Any, reissue: bool) -> None:
        """The live action of a saga rebuilt by replay."""
        assert self._shared is not None
        if L.inherited:
            L.inherited = False
            if code == W.A_DONE:
                self._end(L, "completed", None)
                return
            if code == W.A_FAILED:
                self._fail(L, arg, claimed=True)
                return
            # replay stops short of the terminal the dead worker claimed (the
            # event it consumed was never logged): its claim had no visible
            # effect, so the saga goes back in flight and carries on
            self._shared.reopen(L.sid)
            self.stats["reopened"] += 1
        if not reissue:
            self._apply_act(L, code, arg, None)
            return
        if L.phase != RUNNING or self._shared.is_claimed(L.sid) or not L.open_step:
            return
        target, cmd_json, _name = arg
        self.stats["reissued"] += 1
        if target == 1:
            self._host_out.append((L.sid, L.open_step, cmd_json, False))
        else:
            self._local_out.append((L.sid, L.open_step, target, cmd_json))

    def _close_step(self, L: _Live, consumed: bytes | str, now: float) -> None:
        out = consumed if isinstance(consumed, str) else consumed.decode("utf-8", "replace")
        self._batch.step_ends.append(("succeeded", now, out, None, L.sid, L.open_step))
        if L.succeeded is not None and L.open_cmd is not None:
            L.succeeded.append((L.open_step, L.open_cmd[0], L.open_cmd[1]))
        L.open_cmd = None
        L.open_step = 0

    # -- compensation -------------------------------------------------------

    def _next_compensation(self, L: _Live) -> None:
        while L.comp_queue and L.comp_failed is None:
            orig, target, cmd_json = L.comp_queue.pop(0)
            if target is None or cmd_json is None:
                self._batch.step_comps.append(("compensated", None, L.sid, orig))
                continue
            step = L.next_step
            L.next_step += 1
            L.comp_wait = (orig, step)
            self._batch.step_comps.append(
                ("succeeded", json.dumps({"step": step, "target": _TARGET_NAMES[target],
                                          "cmd": json.loads(cmd_json)}), L.sid, orig))
            if target == 1:
                self._host_out.append((L.sid, step, cmd_json, False))
            else:
                self._local_out.append((L.sid, step, target, cmd_json))
            return
        L.comp_wait = None
        if L.comp_failed is not None:
            self._end(L, "failed_compensation", f"{L.fail_reason}; compensation failed: "
                      f"{L.comp_failed}")
        else:
            self._end(L, "failed", L.fail_reason)

    def _comp_answer(self, L: _Live, step: int, failed: str | None) -> None:
        if L.comp_wait is None or L.comp_wait[1] != step:
            self._count_unknown(L.sid, step, "stale compensation answer")
            return
        orig = L.comp_wait[0]
        L.comp_wait = None
        if failed is None:
            self._batch.step_comps.append(("compensated", None, L.sid, orig))
        else:
            L.comp_failed = f"step {orig}: {failed}"
            L.comp_queue = []
        self._next_compensation(L)

    # -- host -------------------------------------------------------------------

    def _read_host(self, h: _Host) -> None:
        eof = False
        try:
            while True:
                data = os.read(h.rfd, _HOST_READ)
                if not data:
                    eof = True
                    break
                try:
                    bodies = h.reader.feed(data)
                except frames.FrameError as exc:
                    h.bad_frames += 1
                    self.stats["bad_frames"] += 1
                    log.error("host sent an unreadable stream (%s): closing the host pipe", exc)
                    self._host_died(h, f"host pipe broken: {exc}")
                    return
                for body in bodies:
                    self._host_frame(h, body)
                if len(data) < _HOST_READ:
                    break
        except BlockingIOError:
            pass
        except OSError as exc:
            self._host_died(h, f"host pipe read failed: {exc}")
            return
        if eof:
            status = h.proc.poll() if h.proc is not None else None
            if h.proc is not None and status is None:
                try:
                    status = h.proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    status = None
            self._host_died(h, f"host exited (status {status})")

    def _host_frame(self, h: _Host, body: bytes) -> None:
        h.frames_in += 1
        try:
            kind, sid, step, payload = frames.parse_host(body)
        except frames.FrameError as exc:
            h.bad_frames += 1
            self.stats["bad_frames"] += 1
            log.warning("bad host frame (%d so far): %s", h.bad_frames, exc)
            return
        if sid == 0:
            if kind != frames.T_EVENT:
                h.bad_frames += 1
                self.stats["bad_frames"] += 1
                return
            try:
                obj = frames.decode_json_object(payload, "host event")
            except frames.FrameError as exc:
                h.bad_frames += 1
                self.stats["bad_frames"] += 1
                log.warning("bad host frame: %s", exc)
                return
            self._emit.append((str(obj.get("kind", "host")), obj.get("data"), None, None))
            return
        L = self._live.get(sid)
        if L is None or step <= 0 or step >= L.next_step:
            assert self._shared is not None
            if L is None and sid < self._shared.peek_next_id():
                # an answer that arrives after its saga ended (timeout, eviction,
                # cancel): expected, counted, not worth a warning each
                self.stats["late_answers"] += 1
                log.debug("late host answer for ended saga %d step %d", sid, step)
                return
            self._count_unknown(sid, step, "no such saga/step in flight")
            return
        if kind == frames.T_EVENT:
            if L.phase == COMPENSATING:
                self._comp_answer(L, step, None)
                return
            if step != L.open_step:
                L.may_defer = True
            L.worker.msgs.append(
                (W.EVENT, sid, None, payload, True, sid, step, 0, L.sent))
        elif kind == frames.T_ACTION_FAILED:
            try:
                reason = str(frames.decode_json_object(payload, "action failed").get("reason"))
            except frames.FrameError as exc:
                reason = f"(unreadable reason: {exc})"
            if L.phase == COMPENSATING:
                self._comp_answer(L, step, reason)
                return
            if step != L.open_step:
                self._count_unknown(sid, step, "action failed for a step that is not open")
                return
            self._emit.append((SAGA_ACTION_FAILED, {"name": L.name, "reason": reason},
                               sid, step))
            self._fail(L, f"action failed: {reason}")
        else:
            h.bad_frames += 1
            self.stats["bad_frames"] += 1

    def _count_unknown(self, sid: int, step: int, why: str) -> None:
        self.stats["unknown_echo"] += 1
        if self._host is not None:
            self._host.unknown += 1
        log.warning("host answer for saga %d step %d ignored: %s", sid, step, why)

    def _host_died(self, h: _Host, why: str) -> None:
        """The host is gone.  If we started it (an argv) and restarts are
        within intensity, start a new one and send every open host step again
        (same saga id and step: hosts treat re-issued commands idempotently);
        otherwise fail the sagas waiting on it."""
        if not h.alive:
            return
        h.alive = False
        h.death = why
        assert self._sel is not None
        for fd in (h.rfd, h.wfd):
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        _stop_host_process(h, grace=1.0)
        restarted = False
        if self.restart_host and self.host_argv is not None and self._state == "running":
            now = time.monotonic()
            self._host_restarts.append(now)
            while self._host_restarts and now - self._host_restarts[0] > self.restart_period:
                self._host_restarts.popleft()
            if len(self._host_restarts) <= self.max_restarts:
                try:
                    new = self._start_host()
                except SupervisorError as exc:
                    log.error("cannot restart the host: %s", exc)
                else:
                    new.frames_in, new.frames_out = h.frames_in, h.frames_out
                    new.bad_frames, new.unknown = h.bad_frames, h.unknown
                    self._host = new
                    self.stats["host_restarts"] += 1
                    restarted = True
            else:
                log.error("host restart intensity exceeded (%d within %ss): not restarting",
                          len(self._host_restarts), self.restart_period)
        log.error("%s; %s", why, "host restarted, open steps re-issued" if restarted
                  else "sagas waiting on the host fail")
        for L in list(self._live.values()):
            if L.phase == COMPENSATING:
                if L.comp_wait is not None:
                    L.comp_failed = why
                    L.comp_queue = []
                    L.comp_wait = None
                    self._next_compensation(L)
            elif L.open_step and L.open_cmd is not None and L.open_cmd[0] == 1:
                if restarted:
                    self.stats["reissued"] += 1
                    self._host_out.append((L.sid, L.open_step, L.open_cmd[1], False))
                else:
                    self._fail(L, why)

    def _write_host(self, h: _Host) -> None:
        err = self._drain_outbuf(h, "hostw")
        if err is not None:
            self._host_died(h, f"host pipe send failed: {err}")

    def _write_worker(self, w: _Worker) -> None:
        self._drain_outbuf(w, "workerw")  # on error the worker is dead: its sentinel says so

    def _drain_outbuf(self, peer: _Host | _Worker, tag: str) -> OSError | None:
        """Write what `peer.outbuf` holds without blocking; when the pipe is
        full, wait for writability in the selector.  Returns a write error
        (the buffer is dropped then)."""
        assert self._sel is not None
        try:
            while peer.outbuf:
                n = os.write(peer.wfd, peer.outbuf)
                del peer.outbuf[:n]
        except BlockingIOError:
            if not peer.want_write:
                peer.want_write = True
                self._sel.register(peer.wfd, selectors.EVENT_WRITE, (tag, peer))
            return None
        except OSError as exc:
            peer.outbuf.clear()
            return exc
        if peer.want_write:
            peer.want_write = False
            self._sel.unregister(peer.wfd)
        return None

    # -- commit and flush ---------------------------------------------------------

    def _commit_and_flush(self) -> None:
        """End of a turn: commit its batch (inline, or handed to the writer
        under load), then emit its outputs once their batch is committed,
        always in turn order."""
        outputs = (self._host_out, self._local_out, self._emit, self._ended,
                   [(w, w.msgs) for w in (self._retired + self._workers if self._retired
                                          else self._workers) if w.msgs])
        self._host_out, self._local_out, self._emit, self._ended = [], [], [], []
        for w, _msgs in outputs[4]:
            w.msgs = []
        batch = self._batch
        writer = self._writer
        need = self._held[-1][0] if self._held else 0
        if batch:
            if writer is not None and (writer.busy() or batch.rows() >= self.pipeline_rows):
                self._batch = Batch()
                self._seq += 1
                self.stats["commits"] += 1
                self.stats["rows"] += batch.rows()
                writer.submit(self._seq, batch)
                need = self._seq
            else:
                self._commit_now()  # write-ahead of everything below
        if need:
            self._held.append((need, outputs))
        else:
            self._emit_outputs(outputs)
        self._flush_ready()
        for c in self._conns:
            if c.outbuf and not c.want_write:
                self._flush_conn(c)

    def _flush_ready(self, wait: bool = False) -> None:
        """Emit held outputs whose batch is committed (all of them, if `wait`)."""
        writer = self._writer
        while self._held:
            seq, outputs = self._held[0]
            if writer is not None and writer.done < seq:
                if not wait:
                    if writer.error is not None:
                        raise writer.error
                    return
                writer.wait(seq)
            self._held.popleft()
            self._emit_outputs(outputs)

    def _emit_outputs(self, outputs: tuple[Any, ...]) -> None:
        host_out, local_out, emit, ended, msgs = outputs
        if host_out:
            self._dispatch_host(host_out)
        if local_out:
            self._dispatch_local(local_out)
        if ended:
            self._resolve(ended)
        if emit:
            self._publish(emit)
        for w, m in msgs:
            if w.alive:
                # messages queued for w since (by dispatch above) go after these
                w.outbuf += frames.frame(pickle.dumps(m + w.msgs, protocol=5))
                w.msgs = []
                if not w.want_write:
                    self._write_worker(w)
        for w in self._retired + self._workers if self._retired else self._workers:
            if w.msgs and w.alive and not self._held:
                w.outbuf += frames.frame(pickle.dumps(w.msgs, protocol=5))
                w.msgs = []
                if not w.want_write:
                    self._write_worker(w)

    def _drain_log(self) -> None:
        """Wait for the writer, then emit everything held (the log and the
        world agree again): before reading the log, and when stopping."""
        self._flush_ready(wait=True)

    def _dispatch_host(self, out: list[tuple[int, int, str, bool]]) -> None:
        h = self._host
        live = self._live
        shared = self._shared
        assert shared is not None
        if h is None or not h.alive:
            why = "host pipe send failed: no host is configured" if h is None else \
                f"host pipe send failed: {h.death}"
            for sid, step, _cmd, _counts in out:
                L = live.get(sid)
                if L is None:
                    continue
                if L.phase == COMPENSATING:
                    self._comp_answer(L, step, why)
                elif L.open_step == step:
                    self._fail(L, why)
            return
        buf = h.outbuf
        frame = frames.host_frame
        sent = 0
        for sid, step, cmd_json, counts in out:
            L = live.get(sid)
            if L is None:
                continue
            if L.phase == RUNNING:
                if shared.is_claimed(sid):
                    continue  # claimed since it was issued: never send after the end
                if counts:
                    L.sent += 1
                if L.may_defer:
                    L.worker.msgs.append((W.SENT, sid, L.sent))
            buf += frame(frames.T_CMD, sid, step, cmd_json.encode())
            sent += 1
        h.frames_out += sent
        if not h.want_write:
            self._write_host(h)

    def _dispatch_local(self, out: list[tuple[int, int, int, str]]) -> None:
        assert self._shared is not None
        for sid, step, target, cmd_json in out:
            L = self._live.get(sid)
            if L is None:
                continue
            if L.phase == RUNNING and self._shared.is_claimed(sid):
                continue
            handler = self._handlers.get(Target(target))
            result: Any = None
            if handler is not None:
                try:
                    result = handler(json.loads(cmd_json), sid, step)
                    payload = json.dumps({"kind": "echo", "data": result}).encode()
                except Exception as exc:
                    why = f"{Target(target).name} handler raised {type(exc).__name__}: {exc}"
                    if L.phase == COMPENSATING:
                        self._comp_answer(L, step, why)
                    else:
                        self._fail(L, why)
                    continue
            else:
                payload = b'{"kind":"echo","data":null}'
            if L.phase == COMPENSATING:
                self._comp_answer(L, step, None)
                continue
            L.sent += 1
            L.worker.msgs.append(
                (W.EVENT, sid, None, payload, True, sid, step, 0, L.sent))

    def _resolve(self, ended: list[tuple[int, str, str | None]]) -> None:
        with self._lock:
            outcomes = self._outcomes
            order = self._outcome_order
            pending = self._pending
            waiters = self._waiters
            for o in ended:
                sid = o[0]
                pending.discard(sid)
                outcomes[sid] = o
                order.append(sid)
                if waiters:
                    futs = waiters.pop(sid, None)
                    if futs:
                        out = Outcome(*o)
                        for f in futs:
                            f.set(out)
            while len(order) > _OUTCOMES_KEPT:
                outcomes.pop(order.popleft(), None)
        if self._remote_waiters:
            for o in ended:
                for c, req in self._remote_waiters.pop(o[0], ()):
                    c.send(("ok", req, (o[1], o[2])))

    def _publish(self, events: list[tuple[str, Any, int | None, int | None]]) -> None:
        subs = self._subs
        triggers = self._triggers if self._state == "running" else None
        listeners = self._listeners
        conns = [c for c in self._conns if c.subscribed] if self._conns else None
        version = self._version
        for kind, data, saga_id, step in events:
            version += 1
            ids = listeners.get(kind) if listeners else None
            if not (subs or conns or ids or triggers):
                continue  # nobody looks: the version is spent, no object is built
            ev = Event(kind, data, saga_id, step, version)
            for s in subs:
                s._q.put(ev)
            if conns:
                for c in conns:
                    c.send(("event", kind, data, saga_id, step, version))
            if ids:
                for sid in ids:
                    L = self._live.get(sid)
                    if L is not None and L.phase == RUNNING and sid != saga_id:
                        L.may_defer = True
                        L.worker.msgs.append(self._event_msg(L, ev))
            if triggers:
                self._version = version
                self._run_triggers(ev)
        self._version = version

    def _event_msg(self, L: _Live, ev: Event) -> tuple[Any, ...]:
        return (W.EVENT, L.sid, ev.kind, ev.data, False, ev.saga_id, ev.step, ev.version, L.sent)

    def _run_triggers(self, ev: Event) -> None:
        assert self._shared is not None
        for factory, predicate in self._triggers:
            try:
                if not predicate(ev):
                    continue
                saga = factory(ev)
                item = self._prepare(saga)
            except Exception:
                self.stats["trigger_errors"] += 1
                log.exception("trigger failed on %s event v%d", ev.kind, ev.version)
                continue
            sid = self._shared.acquire()
            name = item[2]
            for old in list(self._by_kind.get(name, ())):
                L = self._live.get(old)
                if L is not None and L.phase == RUNNING:
                    self._fail(L, f"evicted: replaced by saga {sid} on {ev.kind} "
                               f"v{ev.version}")
            with self._lock:
                self._pending.add(sid)
            self._do_spawn(sid, item, ev)

    # -- worker death ---------------------------------------------------------------

    def _worker_died(self, w: _Worker) -> None:
        """A worker is gone: read what it wrote, then replay its sagas on its
        replacement (kinds registered for replay) or fail them ("worker
        crashed"); a claim it took without reporting is inherited and
        resolved by replay.  Restart intensity is bounded (OTP-style)."""
        assert self._sel is not None and self._shared is not None
        self._read_worker(w)  # replies written before death still count
        w.alive = False
        for fd in (w.rfd, w.proc.sentinel) + ((w.wfd,) if w.want_write else ()):
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        w.proc.join(1.0)
        code = w.proc.exitcode
        why = w.kill_reason or f"worker crashed (exit code {code})"
        for fd in (w.rfd, w.wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        orphans = [x for x in self._live.values() if x.worker is w]
        replacement: _Worker | None = None
        intensity = False
        if w.retiring:
            self._retired = [x for x in self._retired if x is not w]
            if orphans and self._state == "running":
                # died before finishing its sagas: they go to its successor
                replacement = self._workers[w.index]
        elif self._state == "running" and w in self._workers:
            log.error("worker %d (pid %s) died (exit code %s); %d saga(s) in flight on it",
                      w.index, w.proc.pid, code, len(orphans))
            now = time.monotonic()
            self._restarts.append(now)
            while self._restarts and now - self._restarts[0] > self.restart_period:
                self._restarts.popleft()
            if len(self._restarts) > self.max_restarts:
                err = RestartIntensityError(
                    f"{len(self._restarts)} worker restarts within {self.restart_period}s "
                    f"(max_restarts={self.max_restarts}): stopping the supervisor")
                log.error("%s", err)
                intensity = True
                self._crash = err
                self._state = "stopping"
                self._stop_reason = "supervisor stopped: restart intensity exceeded"
                self._drain_deadline = now
                self._inbox.append(("stop", False, 0.0))
            else:
                self.stats["worker_restarts"] += 1
                # back off when deaths come in a row: 0, then 50 ms, 100 ms, ...
                # (capped at 2 s), so a crash loop does not spin the machine
                backoff = 0.0 if len(self._restarts) <= 1 else \
                    min(self.restart_backoff * 2 ** (len(self._restarts) - 2), 2.0)
                if backoff > 0:
                    log.warning("restarting worker %d in %.2fs (restart %d within %ss)",
                                w.index, backoff, len(self._restarts), self.restart_period)
                    heapq.heappush(self._later, (now + backoff, w.index, w, why))
                    return
                replacement = self._start_worker(w.index)
                self._workers[w.index] = replacement
        self._adopt_orphans(w, replacement, why, intensity)

    def _restart_later(self) -> None:
        """Start the replacements whose backoff has passed."""
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            _when, index, dead, why = heapq.heappop(self._later)
            if self._state != "running" or self._workers[index] is not dead:
                continue
            replacement = self._start_worker(index)
            self._workers[index] = replacement
            self._adopt_orphans(dead, replacement, why, False)

    def _adopt_orphans(self, w: _Worker, replacement: _Worker | None, why: str,
                       intensity: bool) -> None:
        """Replay a dead worker's sagas on its replacement, or fail them."""
        assert self._shared is not None
        orphans = [x for x in self._live.values() if x.worker is w]
        if self._batch:  # the log must show every row of these sagas before replay
            self._commit_now()
        if intensity:
            why += "; not restarted: restart intensity exceeded"
        for L in orphans:
            claimed = self._shared.state(L.sid) == "claimed"
            if L.phase == COMPENSATING:
                L.comp_failed = why
                L.comp_queue = []
                L.comp_wait = None
                self._next_compensation(L)
                continue
            if replacement is not None and self._replay_orphan(L, claimed, why):
                continue
            if claimed:
                self._end(L, "failed", f"{why} after claiming the terminal; it could not "
                          "be re-derived by replay")
            else:
                self._fail(L, why)

    def _replay_orphan(self, L: _Live, claimed: bool, why: str) -> bool:
        assert self._log is not None
        row = self._log.saga(L.sid)
        if row is None:
            return False
        item = self._rebuild_item(L.sid, L.name, row["input_json"])
        steps = self._log_steps(L.sid) if not isinstance(item, str) else item
        if isinstance(item, str) or isinstance(steps, str):
            if item != "not replayable":
                self.stats["replay_failed"] += 1
                log.warning("saga %d cannot be replayed after %s: %s", L.sid, why, steps)
            return False
        self._forget(L)
        self._do_replay(L.sid, item, steps, float(row["started_at"]), inherited=claimed)
        return True

    def _commit_now(self) -> None:
        if self._writer is not None and self._seq > self._writer.done:
            self._writer.wait(self._seq)  # commits stay in order
        batch = self._batch
        if batch:
            assert self._log is not None
            self._batch = Batch()
            self._log.commit(batch)
            self.stats["commits"] += 1
            self.stats["rows"] += batch.rows()

    # -- worker health: heartbeat and RSS thresholds ---------------------------------

    def _check_workers(self) -> None:
        """Act on a threshold only after `breaches` consecutive breaches: a
        silent worker (stuck in user code) is killed and replaced, one over
        `rss_limit` is recycled gracefully (a fresh worker takes its shard, the
        old one finishes its sagas and exits)."""
        import psutil

        now = time.monotonic()
        for w in list(self._workers) + [x for x in self._retired if x.alive]:
            if not w.alive:
                continue
            if now - w.last_reply > self.heartbeat_timeout:
                w.hb_breaches += 1
                if w.hb_breaches >= self.breaches and w.kill_reason is None:
                    w.kill_reason = (f"worker unresponsive (no heartbeat for "
                                     f"{now - w.last_reply:.1f}s)")
                    log.error("worker %d (pid %s): %s; killing it", w.index, w.proc.pid,
                              w.kill_reason)
                    w.proc.kill()
                    continue
            else:
                w.hb_breaches = 0
            try:
                if w.psproc is None:
                    w.psproc = psutil.Process(w.proc.pid)
                w.rss = int(w.psproc.memory_info().rss)
            except psutil.Error:
                continue
            if self.rss_limit is not None and not w.retiring and self._state == "running":
                if w.rss > self.rss_limit:
                    w.rss_breaches += 1
                    if w.rss_breaches >= self.breaches:
                        self._recycle(w)
                else:
                    w.rss_breaches = 0
        for w in [x for x in self._retired if x.alive and x.count == 0 and not x.msgs]:
            self._stop_worker(w)

    def _recycle(self, w: _Worker) -> None:
        log.warning("worker %d (pid %s) RSS %d B over the limit %d B %d times: recycling",
                    w.index, w.proc.pid, w.rss, self.rss_limit, w.rss_breaches)
        self.stats["worker_recycles"] += 1
        w.retiring = True
        self._retired.append(w)
        self._workers[w.index] = self._start_worker(w.index)

    def _stop_worker(self, w: _Worker) -> None:
        """Ask a retired worker with nothing in flight to exit (its sentinel
        then fires and finds no orphans)."""
        try:
            os.write(w.wfd, frames.frame(pickle.dumps([(W.STOP,)])))
        except OSError:
            pass

    # -- health file ---------------------------------------------------------------

    @property
    def health_path(self) -> Path:
        return self.data_dir / "run" / "health.json"

    def _write_health(self) -> None:
        """Refresh <data_dir>/run/health.json (atomically) for the CLI probe."""
        from supervisor.health import snapshot

        try:
            snap = snapshot(self)
            path = self.health_path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(snap))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the health file: %s", exc)

    # -- teardown -------------------------------------------------------------------

    def _teardown(self) -> None:
        """Stop workers and host, close the log, unlink the segment.  Safe to
        call on a half-started supervisor and more than once."""
        self._workers = self._workers + self._retired
        self._retired = []
        for w in self._workers:
            if w.alive:
                try:
                    os.write(w.wfd, frames.frame(pickle.dumps([(W.STOP,)])))
                except OSError:
                    pass
            for fd in (w.wfd, w.rfd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            w.alive = False
        deadline = time.monotonic() + 5.0
        for w in self._workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.exitcode is None:
                w.proc.terminate()
                w.proc.join(2.0)
            if w.proc.exitcode is None:
                w.proc.kill()
                w.proc.join(2.0)
        self._workers = []
        h = self._host
        if h is not None:
            _stop_host_process(h, grace=5.0)
        self._host = None
        for c in list(self._conns):
            self._close_conn(c)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            for leftover in (self._control_path, self.data_dir / "run" / "control"):
                try:
                    if leftover is not None:
                        leftover.unlink()
                except OSError:
                    pass
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1
        try:
            self.health_path.unlink()
        except OSError:
            pass
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._shared is not None:
            self._shared.close()
            self._shared.unlink()
            # keep the handle for shm_name in messages; it is closed now

