"""The one public :class:`Supervisor`, on either engine.

Every argument is checked here, once; what is left differs only by where the
engine runs, and that is the *link*'s (:mod:`supervisor.facade.link`):
``engine="thread"`` runs it as a thread of this process, ``engine="process"``
in a supervisor process of its own.  Both engines take the same arguments
and return the same types from every method.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import supervisor._engine.metrics as _metrics
import supervisor.common.checks as _validate
from supervisor._engine.records import Settings
from supervisor._engine.registrations import (HandlerRegistration, KindRegistration,
                                              Registration, TriggerRegistration)
from supervisor.common.subscription import Subscription
from supervisor.facade.foreground import serve_until_signal
from supervisor.errors import NotRunningError, SupervisorError
from supervisor.facade.link import Link
from supervisor.store.seam import outcome_of, read_outcome
from supervisor.paths import DataDir
from supervisor.saga import Event, Outcome, Saga, Target

log = logging.getLogger(__name__)

Handler = Callable[[Any, int, int], Any]

ENGINES = ("process", "thread")
DEFAULT_ENGINE = "thread"
# what a supervisor process does when its launcher dies: stop (failing what
# is in flight), suspend (leaving it in the log for the next start), serve on
ORPHAN = ("stop", "suspend", "serve")

__all__ = ["Supervisor", "Subscription", "Handler", "ENGINES", "ORPHAN"]


class Supervisor:
    """Runs sagas in worker processes with a durable log and a host pipe.

    ``Supervisor(data_dir, workers=2, host=[...argv...])`` then ``start()``
    (or ``with``).  `host` is the host program's argv (started as a
    subprocess), or ``host_fds=(write_fd, read_fd)`` for an already-open pair.

    `engine` says where the engine runs: ``"thread"`` (the default), a
    thread of the calling process, or ``"process"``, a supervisor process of
    its own that ``start()`` starts, so that the launcher's own threads never
    hold the engine up.  `orphan` says what a supervisor process does when
    its launcher dies (``"stop"``, ``"suspend"`` or ``"serve"``; the thread
    engine dies with its launcher, and the next start recovers its sagas).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        workers: int = 2,
        host: list[str] | None = None,
        *,
        worker_fill: int = 64,
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
        host_stall_timeout: float = 2.0,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        clock: Callable[[], float] | None = None,
        host_protocol: int = 2,
        max_clients: int | None = None,
        client_quiet_timeout: float = 10.0,
        log: str | None = None,
        log_retry: float = 5.0,
        node: str | None = None,
        node_lease: float = 10.0,
        engine: str | None = None,
        orphan: str = "stop",
    ) -> None:
        engine = DEFAULT_ENGINE if engine is None else engine
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if orphan not in ORPHAN:
            raise ValueError(f"orphan must be one of {', '.join(ORPHAN)}, got {orphan!r}")
        _validate.supervisor_args(workers, host, host_fds, durability, start_method, rss_limit,
                                  breaches, max_restarts, host_protocol, capacity)
        self.settings = Settings(
            workers=workers, host_argv=list(host) if host is not None else None,
            host_fds=host_fds, durability=durability, capacity=capacity,
            retention_days=_validate.positive(retention_days, "retention_days"),
            start_method=start_method, max_restarts=max_restarts,
            restart_period=_validate.positive(restart_period, "restart_period"),
            restart_host=bool(restart_host),
            restart_backoff=float(_validate.timeout(restart_backoff, "restart_backoff",
                                                    allow_none=False) or 0.0),
            rss_limit=rss_limit,
            heartbeat_timeout=_validate.positive(heartbeat_timeout, "heartbeat_timeout"),
            breaches=breaches, health_interval=_validate.positive(health_interval, "health_interval"),
            shm_name=shm_name, start_timeout=_validate.positive(start_timeout, "start_timeout"),
            host_stall_timeout=_validate.positive(host_stall_timeout, "host_stall_timeout"),
            metrics_port=metrics_port, metrics_host=metrics_host, clock=clock,
            host_protocol=host_protocol,
            max_clients=_validate.max_clients(max_clients),
            client_quiet_timeout=_validate.positive(client_quiet_timeout,
                                                    "client_quiet_timeout"),
            log=_validate.log_url(log),
            log_retry=_validate.positive(log_retry, "log_retry"),
            node=_validate.node(node, log, data_dir),
            node_lease=_validate.positive(node_lease, "node_lease"),
            worker_fill=_validate.worker_fill(worker_fill))
        _validate.clock_and_port(clock, metrics_port)
        if metrics_port is not None:
            _metrics.require()  # the extra is missing: say so now, not at start()
        self.data_dir = Path(data_dir)
        self.paths = DataDir(self.data_dir)
        self.engine = engine
        self._link: Link
        if engine == "process":
            from supervisor.facade.process_link import ProcessLink

            self._link = ProcessLink(self.paths, self.settings, orphan)
        else:
            from supervisor.facade.thread_link import ThreadLink

            self._link = ThreadLink(self.paths, self.settings)

    # -- properties -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``running``, ``stopping`` or ``stopped``
        (also once it stopped on its own: see `error`)."""
        return self._link.state

    @property
    def error(self) -> BaseException | None:
        """What stopped it on its own (restart intensity, the log, a
        supervisor process that died), or None."""
        return self._link.error

    @property
    def pid(self) -> int | None:
        """The pid of the process the engine runs in, once started."""
        return self._link.pid

    @property
    def shm_name(self) -> str:
        return self._link.shm_name

    @property
    def db_path(self) -> Path:
        return self.paths.db

    @property
    def health_path(self) -> Path:
        return self.paths.health_file

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) where ``/metrics`` is served, once started; else None."""
        return self._link.metrics_address

    @property
    def durability(self) -> str:
        return self.settings.durability

    @property
    def stats(self) -> dict[str, int]:
        """The engine's counters."""
        return self._link.stats()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Open the log, create the shared segment, start workers, the host and
        the loop (in a supervisor process of its own with ``engine="process"``).
        On any error everything started so far is torn down."""
        if self.state != "new":
            raise NotRunningError(f"start() called on a supervisor that is {self.state}")
        self._link.start()
        atexit.register(self._atexit)
        return self

    def stop(self, drain: bool = False, timeout: float = 5.0, suspend: bool = False) -> None:
        """Stop: with `drain`, let sagas in flight finish for up to `timeout`
        seconds; then fail the rest with "supervisor stopped" — every saga
        :meth:`spawn` accepted gets a logged outcome — or, with `suspend`,
        leave them in the log for the next start to resume, as after a crash.
        Closes the log, stops workers and host, unlinks the shared segment.
        Idempotent."""
        limit = float(_validate.timeout(timeout, allow_none=False) or 0.0)
        self._link.stop(bool(drain), limit, bool(suspend))
        atexit.unregister(self._atexit)

    def _atexit(self) -> None:
        """The interpreter exits with the supervisor running (a script that
        forgot stop()): stop it, so no worker, host or segment outlives us."""
        if self.state in ("running", "stopping", "starting"):
            self.stop()

    def __enter__(self) -> Supervisor:
        # (a supervisor already started is entered as it is; a stopped one
        # cannot start again, and start() says so)
        return self if self.state == "running" else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve(self, drain_timeout: float = 10.0,
              ready: Callable[[], Any] | None = None) -> int:
        """Run in the foreground until SIGTERM or SIGINT (main thread only),
        then stop, draining in-flight sagas for up to `drain_timeout` seconds.
        `ready()` is called once it runs and SIGTERM/SIGINT are handled.
        Returns 0, or 1 if the supervisor stopped on an error."""
        return serve_until_signal(self, drain_timeout, ready)

    # -- registration (before start, or any time) -----------------------------------------

    def register_kind(self, kind: type[Saga] | str,
                      factory: Callable[[dict[str, Any]], Saga] | None = None,
                      replay: bool = True, *, max_in_flight: int | None = None,
                      queue_timeout: float | None = None,
                      orphan_timeout: float | None = None, portable: bool = False,
                      fleet_limit: int | None = None) -> None:
        """Say how to rebuild a saga of `kind` from its logged input snapshot,
        so that it is resumed by replay after a restart or a worker crash.
        `factory(snapshot)` defaults to ``cls(**snapshot)``.  With
        ``replay=False`` such sagas are failed instead.  With
        ``engine="process"`` the factory is shipped to the supervisor process
        (dill) and runs there.

        `max_in_flight` caps the sagas of the kind in flight; spawns past it
        wait in the kind's durable FIFO queue, failing with "queue timeout"
        after `queue_timeout` seconds there (None: no limit).  Register before
        ``start()`` so that restart recovery knows the kind; a limit changed
        later applies from the kind's next spawn or end.

        `orphan_timeout` (a fleet on a PostgreSQL log): the kind's sagas on a
        node whose lease expired that many seconds ago are failed by this
        node ("orphaned: ..."), after that node is fenced, instead of waiting
        for it to come back.  ``portable=True``: the kind's sagas on a dead
        node are taken over by the live nodes that registered it so, and
        replayed on their hosts.  `fleet_limit` caps the kind's sagas in
        flight across the fleet, one FIFO queue for all nodes (register it
        alike on each; `queue_timeout` applies).  See docs/fleet.md."""
        name, factory = _validate.kind(kind, factory, replay)
        orphan, fleet_cap = _validate.fleet_kind(portable, replay, orphan_timeout, fleet_limit,
                                                 max_in_flight)
        if self.settings.log is None:  # (SQLite: this supervisor is the whole fleet)
            max_in_flight, fleet_cap = fleet_cap or max_in_flight, None
        limit = _validate.kind_limit(1 << 62 if fleet_cap else max_in_flight, queue_timeout)
        self._register(KindRegistration(name, factory, bool(replay), limit, orphan,
                                        portable, fleet_cap))

    def register_handler(self, target: Target, fn: Handler) -> None:
        """Handle LAUNCHER_SELF or SRV commands in the supervisor (on its loop
        thread; in the supervisor process with ``engine="process"``):
        ``fn(command, saga_id, step)`` returns the echo's data (or raises,
        which fails that saga)."""
        if target not in (Target.LAUNCHER_SELF, Target.SRV):
            raise ValueError(f"handlers are for LAUNCHER_SELF or SRV, not {target!r}")
        if not callable(fn):
            raise TypeError("handler must be callable")
        self._register(HandlerRegistration(Target(target), fn))

    def add_trigger(self, saga_factory: Callable[[Event], Saga],
                    predicate: Callable[[Event], bool]) -> None:
        """Spawn ``saga_factory(event)`` for every domain event on the bus
        matching `predicate` (lifecycle events never fire triggers); an
        in-flight saga of the same kind is evicted first.  Both run on the
        loop thread; one that raises is counted, logged and announced
        (``SagaSpawnFailed``)."""
        if not callable(saga_factory) or not callable(predicate):
            raise TypeError("add_trigger(saga_factory, predicate) takes two callables")
        self._register(TriggerRegistration(saga_factory, predicate))

    def _register(self, reg: Registration) -> None:
        if self.state in ("stopping", "stopped"):
            raise NotRunningError(f"cannot register: the supervisor is {self.state}")
        self._link.register(reg)

    # -- sagas ------------------------------------------------------------------------------

    def spawn(self, saga: Saga, key: str | None = None, durable: bool = False) -> int:
        """Start `saga`; returns its id at once (callable from any thread).
        Raises :class:`SpawnError` if the saga cannot be shipped to a worker,
        :class:`NotRunningError` if the supervisor is not running.

        The id is returned *before* the saga is logged: while the supervisor
        lives, every id returned gets a logged outcome; if it dies before the
        next commit (a few ms), the saga never ran and ``wait()`` on the id
        raises :class:`SagaNotLoggedError` on any later supervisor.  With
        `durable`, it returns only once the saga is in the log (then a crash
        at any point recovers it): one commit of latency more.

        With an idempotency `key`, a saga that holds the key already — in
        flight, or ended and not yet purged (``retention_days``), across
        restarts — is returned instead of starting another; of concurrent
        spawns with one key (any threads or processes) exactly one starts."""
        if key is not None:
            key = _validate.key(key)
        return self._link.spawn(saga, key, bool(durable))

    def spawn_many(self, sagas: list[Saga], durable: bool = False) -> list[int]:
        """Start many sagas at once (one hand-over to the loop for all): their
        ids, in order.  All are encoded first, so a saga that cannot be
        shipped raises :class:`SpawnError` before any starts.  `durable`: as
        for :meth:`spawn`, return once all are in the log."""
        return self._link.spawn_many(_validate.sagas(sagas), bool(durable))

    def wait(self, saga_id: int, timeout: float | None = None) -> Outcome:
        """Block until `saga_id` has its terminal outcome (from any thread).
        Raises ``TimeoutError`` after `timeout` seconds,
        :class:`UnknownSagaError` (a ``ValueError``) for an id this supervisor
        and its log do not know, :class:`NotRunningError` before ``start()``."""
        sid = _validate.saga_id(saga_id)
        limit = _validate.timeout(timeout)
        if self.state == "new":
            raise NotRunningError(f"wait({sid}) before start(): the supervisor has not started")
        found = self._link.wait(sid, limit)
        if found is None:
            row = self._logged(sid)
            if not self._started_since(row):
                return self._from_log(sid, row)
            found = self._link.wait(sid, limit)
        return found if found is not None else self._from_log(sid, self._logged(sid))

    def _logged(self, saga_id: int) -> tuple[str, str | None] | None:
        return read_outcome(self.settings.log, self.paths, saga_id, self._link.run_first)

    def _started_since(self, row: tuple[str, str | None] | None) -> bool:
        """A saga not in flight here when wait() looked, whose row says it is
        running while this supervisor runs: another client's spawn may have
        reached the loop between the look and the read.  The loop expects a
        saga's outcome before its row is committed, so a second look finds it
        (in flight, or ended); one owned by another node is not found again."""
        return (row is not None and row[0] in ("running", "compensating")
                and self.state == "running")

    def _from_log(self, saga_id: int, row: tuple[str, str | None] | None) -> Outcome:
        """``wait()`` on a saga not in flight here: its logged outcome (the
        one rule: :func:`supervisor.store.seam.outcome_of`)."""
        stopped = self.state in ("stopping", "stopped")
        return outcome_of(saga_id, row, self.error,
                          self._link.suspended if stopped else None)

    def cancel(self, saga_id: int, reason: str = "cancelled", timeout: float = 10.0) -> bool:
        """Fail `saga_id` with ``cancelled: <reason>`` if it is still in
        flight.  True if this call decided its terminal, False if it had
        already ended."""
        sid = _validate.saga_id(saga_id)
        _validate.text(reason, "reason")
        limit = float(_validate.timeout(timeout, allow_none=False) or 0.0)
        return self._link.cancel(sid, reason, limit)

    def publish(self, event: Event) -> None:
        """Put a domain event on the bus (from any thread): offered to sagas
        listening to its kind and to triggers."""
        _validate.event(event)
        self._link.publish(event)

    def subscribe(self, callback: Callable[[Event], Any] | None = None) -> Subscription:
        """Receive every bus event from now on (lifecycle and domain): as a
        queue to read, or, with `callback`, as calls to it (keep it quick;
        one that raises is counted and logged): on the loop thread with the
        thread engine, on a thread of this process with the process engine."""
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        self._not_stopped("subscribe")
        return self._link.subscribe(callback)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Bus events from now on (subscribed at this call); ends when the
        supervisor stops or no event came for `timeout` seconds."""
        limit = _validate.timeout(timeout)
        sub = self.subscribe()

        def events() -> Iterator[Event]:
            with sub:
                yield from sub.until_quiet(limit)
        return events()

    # -- asyncio -----------------------------------------------------------------------------

    async def wait_async(self, saga_id: int, timeout: float | None = None) -> Outcome:
        """:meth:`wait` for asyncio: awaits the outcome without holding a thread."""
        sid = _validate.saga_id(saga_id)
        limit = _validate.timeout(timeout)
        if self.state == "new":
            raise NotRunningError(f"wait({sid}) before start(): the supervisor has not started")
        found = await self._link.wait_async(sid, limit)
        if found is None:
            row = self._logged(sid)
            if not self._started_since(row):
                return self._from_log(sid, row)
            found = await self._link.wait_async(sid, limit)
        return found if found is not None else self._from_log(sid, self._logged(sid))

    def events_async(self, idle: float | None = None) -> AsyncIterator[Event]:
        """Every bus event from now on, for ``async for``; ends when the
        supervisor stops (or after `idle` seconds without an event)."""
        limit = _validate.timeout(idle, "idle")
        self._not_stopped("subscribe")
        return self._link.events_async(limit)

    # -- looking at it ----------------------------------------------------------------------

    def in_flight(self) -> int:
        """Sagas in flight now."""
        return self._link.in_flight() if self.state != "new" else 0

    def health(self) -> dict[str, Any]:
        """A snapshot of the supervisor's processes and counters."""
        return self._link.health()

    def metrics(self) -> str:
        """The Prometheus exposition a scrape of ``/metrics`` gets (needs
        ``metrics_port``)."""
        if self.settings.metrics_port is None:
            raise SupervisorError("metrics() needs Supervisor(..., metrics_port=...)")
        if self.state == "new":
            raise NotRunningError("cannot read metrics: the supervisor is new")
        return self._link.metrics()  # once stopped: the run's last counters

    def _not_stopped(self, verb: str) -> None:
        """A stopped supervisor has no more events: subscribing to it is a
        mistake said outright, not a stream that never yields."""
        if self.state == "stopped":
            raise NotRunningError(f"cannot {verb}: the supervisor is stopped")
