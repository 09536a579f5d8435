"""The loop thread: selector, the order of a turn, start-up, teardown.

Data flow (one turn)::

    Supervisor / SagaClient --> inbox (Spawn, Cancel, Publish, ...) --+
    worker reply pipes -----------> routing.worker_replies ----------+
    host stdout ------------------> routing.host_frame --------------+--> sagas, compensation,
    worker sentinels -------------> workers.died -> recovery ---------+    recovery, bus
    timer heap (.timers) ---------> each due entry's owner -----------+        |
                                                                                v
             turn: log rows (Batch) + held outputs  --> group commit: ONE per turn
                                                                                |
             only then (emit): dispatch (host, local handlers), outcomes, bus, |
             control-socket replies, worker messages  <------------------------+

Ownership: this thread is the only one that touches the log (the group commit's
writer thread borrows it, and this thread waits for it before touching it
again), the host pipe and the worker pipes; the shared segment is created
here and unlinked here.  The inbox and the exits are the only ways in and
out.  Only the log's errors end the loop (:class:`LogError`); every input is
handled inside its own failure boundary (see :mod:`.routing`).
"""

from __future__ import annotations

import logging
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any

import multiprocess

from supervisor.wire.codec import ClassRegistry
from supervisor._engine import registrations
from supervisor._engine.bus import Bus, Trigger
from supervisor._engine.control import ControlServer
from supervisor._engine.dispatch import Handler
from supervisor._engine.host_link import HostLink
from supervisor._engine.host_watch import HostWatch
from supervisor._engine.ids import BLOCK, IdFence, first_id
from supervisor._engine.fleet import FleetSide
from supervisor._engine.inbox import Cancel, Inbox, RequeueAll, Stop
from supervisor._engine.observations import Observations
from supervisor._engine.metrics import EngineCollector, MetricsServer, exposition
from supervisor._engine.exits import Exits
from supervisor._engine.group_commit import GroupCommit
from supervisor._engine.records import Lifecycle, Settings, Stats, Turn, TurnOutputs, WorkerProc
from supervisor._engine.pacing import Pacing
from supervisor._engine.parts import SagaCore
from supervisor._engine.queues import Limits
from supervisor._engine.reaper import Reaper
from supervisor._engine.recovery import Kinds, at_start
from supervisor._engine.requests import Requests
from supervisor._engine.segment import DirLock, create_segment, note_segment
from supervisor._engine.status import describe
from supervisor._engine.table import SagaTable
from supervisor._engine.timers import Timers
from supervisor._engine.worker_watch import WorkerWatch
from supervisor._engine.workers import WorkerPool
from supervisor.errors import SupervisorCrashedError, stopped_before_end
from supervisor.health import EngineView, snapshot, write_health_file
from supervisor.store.sqlite import LogError
from supervisor.store.seam import LogStore, open_store
from supervisor.common.ratelimit import RateLimitedLog
from supervisor.paths import DataDir
from supervisor.saga import Target
from supervisor.shmem.state import SharedState

log = logging.getLogger(__name__)
_warn = RateLimitedLog(log, 10.0)

_PURGE_EVERY = 3600.0
# requests taken per turn: a burst is committed and announced in slices
_TAKE_PER_TURN = 2048


class Engine:
    """Every part of the engine, wired; :meth:`start` runs the loop thread."""

    def __init__(self, paths: DataDir, settings: Settings) -> None:
        self.paths = paths
        self.settings = settings
        # reached from any thread
        self.life = Lifecycle()
        self.stats = Stats()
        self.inbox = Inbox()
        self.exits = Exits()
        self.registry = ClassRegistry()
        self.kinds: Kinds = {}
        self.limits: Limits = {}  # per-kind max_in_flight and queue timeout
        self.fleet = FleetSide(self.inbox, self.exits)  # orphans, portable kinds, adopt
        self.handlers: dict[Target, Handler] = {}
        self.triggers: list[Trigger] = []
        # loop thread only
        self.turn = Turn()
        self.timers = Timers()  # every deadline the loop waits for, in one heap
        self.table = SagaTable(self.timers)
        self.observations = Observations(enabled=settings.metrics_port is not None)
        # deadlines run on this clock; health ticks, stalls and heartbeats on real time
        self.clock: Callable[[], float] = settings.clock or time.monotonic
        self.metrics: MetricsServer | None = None
        self.log: LogStore | None = None
        self.shared: SharedState | None = None
        self.reaper: Reaper | None = None  # unlinks the segment if we die without stopping
        self.dir_lock: DirLock | None = None
        self.held_dir = False  # run/'s files are ours once we took the lock
        self.sel: selectors.BaseSelector | None = None
        self.thread: threading.Thread | None = None
        # made by _start(); teardown() copes with a start that stopped half-way
        self.pool: WorkerPool
        self.host: HostLink
        self.control: ControlServer
        self.group_commit: GroupCommit
        self._dead: list[WorkerProc] = []

    # -- start-up -------------------------------------------------------------------

    def start(self) -> None:
        """Open the log, create the segment, recover, start workers, host,
        control socket and the loop thread; on any error tear down all."""
        self.life.state = "starting"
        try:
            self._start()
        except BaseException as exc:
            self.teardown()
            self.life.state = "stopped"
            self.exits.close(exc)  # a subscription made before it ends: nothing comes
            raise
        self.life.state = "running"
        assert self.thread is not None
        self.thread.start()

    def _start(self) -> None:
        s, stats, turn, table = self.settings, self.stats, self.turn, self.table
        sagalog = self.log = open_store(s.log, self.paths, s.durability, s.log_retry,
                                        s.node, s.node_lease, self.fleet)
        # the data dir's lock (and, under its default name, the segment): nothing
        # below writes the log unless no other live supervisor owns this data dir
        first = first_id(sagalog.next_id(), [u[0] for u in sagalog.unfinished()], s.capacity)
        self.dir_lock = DirLock(self.paths)
        self.held_dir = True
        shared = self.shared = create_segment(s.shm_name or self.paths.segment,
                                              s.capacity, first, self.paths.root)
        note_segment(self.paths, shared.name)
        self.reaper = Reaper(shared.path)
        # the mark goes to the log before the fence lets any id out (see .ids)
        sagalog.begin_run(first, first + BLOCK)
        self.ids = IdFence(shared, turn, first + BLOCK)
        shared.raise_id_limit(first + BLOCK)
        sagalog.purge(s.retention_days)
        sel = self.sel = selectors.DefaultSelector()
        inbox = self.inbox
        inbox.open()
        attach = getattr(s.clock, "attach", None)
        if attach is not None:  # a test's clock wakes the loop when it is advanced
            attach(inbox.wake)
        sel.register(inbox.wake_r, selectors.EVENT_READ, lambda mask: inbox.drain_wake())
        pool = self.pool = WorkerPool(s, multiprocess.get_context(s.start_method), sel,
                                      shared.name, self.registry, stats, self.life,
                                      lambda w: self.workers.readable(w), self._dead.append,
                                      self.timers, table.live)
        core = SagaCore(sagalog, shared, table, turn, stats, self.life,
                        pick_worker=pool.for_saga, ship_class=pool.ship_class,
                        send_workers=self._send_workers, emit=self._emit, kinds=self.kinds,
                        prepare=self.registry.prepare, handlers=self.handlers,
                        limits=self.limits, fleet_limits=self.fleet.fleet_limits,
                        unplaced=self.fleet.unplaced, observations=self.observations,
                        clock=self.clock, wake_fd=inbox.wake_w,
                        pipeline_rows=s.pipeline_rows if sagalog.local else 1,
                        host_protocol=s.host_protocol,
                        first_queue_seq=sagalog.max_queue_seq() + 1)
        sagas, queues = self.sagas, self.queues = core.sagas, core.queues
        self.group_commit = core.group_commit
        self.compensation, self.recovery, self.keys = core.compensation, core.recovery, core.keys
        self.retries, self.dispatch, self.routing = core.retries, core.dispatch, core.routing
        self.collector = EngineCollector(self.health, self.observations, table.by_kind)
        control = self.control = ControlServer(self.paths, sel, self.life, shared, table,
                                               self.exits, self.registry, sagas, turn,
                                               self._read_outcome,
                                               lambda: exposition(self.collector),
                                               self.keys.spawn, self.health, s.max_clients,
                                               s.client_quiet_timeout,
                                               lambda reg: registrations.apply(self, reg),
                                               getattr(s.clock, "set_offset", None),
                                               self.inbox.post_internal, _TAKE_PER_TURN)
        self.bus = Bus(table, sagas, shared, self.exits, turn, stats, self.life,
                       self.registry.prepare, self.triggers, control.subscribed)
        self.host = HostLink(s, sel, stats, self.life, lambda h: self.hosts.readable(h),
                             lambda h: self.hosts.writable(h), self.timers, self.clock)
        self.hosts = HostWatch(self.host, self.routing, self.dispatch, self._write_health)
        self.workers = WorkerWatch(pool, table, s, self.routing, self.recovery,
                                   self._begin_stop)
        self.requests = Requests(inbox, sagas, self.keys, self.recovery, self.routing, turn,
                                 self.triggers, queues)
        replays, requeues = at_start(sagalog, shared, self.kinds, self.registry.prepare, stats)
        for req in replays + requeues:
            self.exits.expect(req.saga_id)
        for req in replays:
            inbox.post_internal(req)
        if requeues:  # after the replays: they count against the limits first
            inbox.post_internal(RequeueAll(requeues))
        if self.host.configured:  # first: it starts up while the workers import
            self.host.start()
        pool.start_all()
        self.host.check_started(s.start_timeout)  # a host dead at birth fails start()
        control.open()
        if s.metrics_port is not None:
            self.metrics = MetricsServer(self.collector, s.metrics_host, s.metrics_port)
        self.thread = threading.Thread(target=self._run, name="saga-supervisor-loop",
                                       daemon=True)

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the log failed (or a bug): loud, and nobody hangs
            if isinstance(exc, LogError):
                log.error("supervisor stopping: %s", exc)
            else:
                log.exception("supervisor loop crashed")
            self.life.error = exc
            self._begin_stop(exc, f"supervisor crashed: {type(exc).__name__}: {exc}")
            if not isinstance(exc, LogError):
                # the log still works: every saga in flight (and every spawn
                # accepted) ends there, with the reason
                try:
                    self.requests.take(stopping_now=True)
                    self.sagas.fail_all(self.life.stop_reason)
                    self._end_turn()
                    self.group_commit.drain()
                except BaseException:
                    log.exception("could not record the outcome of the sagas in flight")
            # else nothing more is written: what was committed stays, and the
            # sagas still running there are recovered at the next start
        finally:
            self.teardown()
            self.life.state = "stopped"
            err = self.life.error
            if err is not None:  # leave the reason where a liveness probe looks
                self._write_health([f"stopped: {type(err).__name__}: {err}"])
            self.exits.close(SupervisorCrashedError(err) if err is not None else
                                stopped_before_end(self.requests.suspend))
            while self.inbox:
                item = self.inbox.take()
                if type(item) is Cancel:
                    item.future.set(False)

    def _loop(self) -> None:
        sel, inbox, table, pool, commits, control = self.sel, self.inbox, self.table, \
            self.pool, self.group_commit, self.control
        timers = self.timers
        assert sel is not None
        health_every = self.settings.health_interval
        last_purge = last_health = time.monotonic()
        self._write_health()
        clock = self.clock
        pacing = Pacing(self.stats)
        while True:
            vnow = clock()
            timeout = min(1.0, health_every, self.settings.host_stall_timeout)
            at = timers.next_due()
            if at is not None:
                timeout = min(timeout, max(0.0, at - vnow))
            if self.requests.drain_deadline is not None:
                timeout = min(timeout, 0.05)
            pacing.wait()
            inbox.sleeping = True
            if inbox:
                timeout = 0.0
            ready = sel.select(timeout)
            inbox.sleeping = False
            for key, mask in ready:
                key.data(mask)
            stopping = self.requests.take(limit=_TAKE_PER_TURN)
            if self._dead:
                dead = self._dead[:]
                self._dead.clear()  # the pool's sentinels append to this very list
                for w in dead:
                    self.workers.died(w)
            now, vnow = time.monotonic(), clock()
            if timers.heap and timers.heap[0][0] <= vnow:
                timers.run_due(vnow)
            if stopping and not inbox and (not table or now >= stopping):
                if self.requests.suspend:  # left 'running' in the log: the next start
                    log.warning("suspended with %d saga(s) in flight: the next start "
                                "resumes them", len(table))
                else:
                    self.sagas.fail_all(self.life.stop_reason)
                self._end_turn()
                commits.drain()
                control.flush_all()  # the outcomes the stop logged, to their clients
                return
            health_due = now - last_health >= health_every
            if health_due:  # before the commit, so that what it decides goes out now
                last_health = now
                assert self.log is not None
                stalled = self.host.check_stall(now)
                if stalled is not None:
                    self.hosts.lost(*stalled)
                self.log.check_file()  # deleted or replaced: LogError ends the loop
                control.check(now)
                try:
                    pool.check()
                except OSError as exc:  # psutil's reads (EMFILE...): next tick again
                    _warn.warning("check", "worker health check failed: %s", exc)
            self._end_turn()
            control.flush_all()
            pacing.turn_ended(time.monotonic())
            if health_due:
                try:
                    self._write_health()
                except OSError as exc:  # (EMFILE in psutil's reads): next tick again
                    _warn.warning("health", "cannot measure health: %s", exc)
            if now - last_purge > _PURGE_EVERY:
                last_purge = now
                commits.drain()
                assert self.log is not None
                self.log.purge(self.settings.retention_days)

    def _end_turn(self) -> None:
        """The turn's batch goes to the log; its outputs leave once committed."""
        self.ids.check()
        self.control.end_turn()
        self.group_commit.end_turn()

    def _begin_stop(self, error: BaseException | None, reason: str) -> None:
        """Stop from inside the loop (restart intensity, a crash)."""
        if error is not None and self.life.error is None:
            self.life.error = error
        self.life.state = "stopping"
        self.life.stop_reason = reason
        self.inbox.close(f"the supervisor is stopping: {reason}")
        self.inbox.post_internal(Stop(False, 0.0))

    def _emit(self, out: TurnOutputs) -> None:
        """A committed turn's outputs leave: commands, outcomes, events, messages."""
        if out.id_limit:
            self.ids.committed(out.id_limit)
        if out.host_out:
            self.hosts.send(out.host_out)
        if out.local_out:
            self.dispatch.to_local(out.local_out)
        if out.ended:
            self.exits.resolve(out.ended)
            self.control.resolved(out.ended)
        if out.events:
            self.bus.publish(out.events)
        for done in out.after:
            done()
        self._send_workers()  # what dispatch queued for them (SENT, local answers)

    def _send_workers(self) -> None:
        """Every worker's queued messages, as one batch each, in the order
        queued (see :mod:`.group_commit`: they need not wait for a commit)."""
        send = self.pool.send
        for w in self.pool.all():
            if w.outbox and w.alive:
                send(w, w.outbox)
                w.outbox = []
            if w.quarantine:
                self.pool.release_quarantine(w)

    # -- workers ---------------------------------------------------------------------------

    def _read_outcome(self, saga_id: int) -> tuple[str, str | None] | None:
        """The logged outcome (the writer finished first: it borrows the log)."""
        assert self.log is not None
        self.group_commit.drain()
        return self.log.outcome(saga_id)

    def view(self, problems: list[str] | None = None) -> EngineView:
        """A plain description of the engine, for :func:`supervisor.health.snapshot`."""
        if problems is None and self.life.error is not None:
            problems = [f"stopped: {type(self.life.error).__name__}: {self.life.error}"]
        host = getattr(self, "host", None)
        if host is not None and host.down is not None:
            problems = [*(problems or []), host.down]
        return describe(self.life, self.settings, self.stats, self.table,
                        getattr(self, "pool", None), host.host if host is not None else None,
                        getattr(self, "control", None), self.log, problems or [],
                        self.queues.depth() if hasattr(self, "queues") else None)

    def health(self) -> dict[str, Any]:
        return snapshot(self.view())

    def _write_health(self, problems: list[str] | None = None) -> None:
        write_health_file(self.paths.health_file, snapshot(self.view(problems)))

    # -- stop and teardown ---------------------------------------------------------------------

    def stop(self, drain: bool, timeout: float, suspend: bool = False) -> None:
        """Close the inbox with a final Stop; the loop drains, fails the rest
        (or, suspending, leaves them in the log), commits, and tears down.
        Blocks until it did."""
        if self.life.state == "running":
            self.life.state = "stopping"
            self.inbox.close("the supervisor is stopping", Stop(drain, timeout, suspend))
        t = self.thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout + 30)
            if t.is_alive():  # pragma: no cover - loop wedged in user code
                log.error("supervisor loop did not stop in time; tearing down anyway")
        if t is None or not t.is_alive():
            self.teardown()
        self.life.state = "stopped"

    def teardown(self) -> None:
        """Stop workers and host, close the log, unlink the segment.  Safe on a
        half-started engine and more than once."""
        self.inbox.close("the supervisor stopped")
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        for part, close in (("pool", "stop_all"), ("host", "stop"), ("control", "close")):
            if hasattr(self, part):
                getattr(getattr(self, part), close)()
        if self.sel is not None:
            self.sel.close()
            self.sel = None
        self.inbox.close_pipe()
        if self.held_dir:  # (run/ is another supervisor's if we never held the data dir)
            for ours in (self.paths.health_file, self.paths.segment_file):
                try:
                    ours.unlink()
                except OSError:
                    pass
        if hasattr(self, "group_commit"):
            self.group_commit.stop()
        if self.log is not None:
            if self.shared is not None and not self.shared.closed and \
                    not isinstance(self.life.error, LogError):
                try:  # ids past this were never handed out (see supervisor.store.read)
                    self.log.end_run(self.shared.peek_next_id())
                except Exception as exc:  # the log failed: the run stays open-ended
                    log.warning("cannot record the end of this run in the log: %s", exc)
            self.log.close()
            self.log = None
        if self.shared is not None and not self.shared.closed:
            self.shared.close()
            self.shared.unlink()  # the handle stays, for its name in messages
        if self.reaper is not None:
            self.reaper.close()
            self.reaper = None
        if self.dir_lock is not None:
            self.dir_lock.release()
            self.dir_lock = None
