"""The public face of the engine: :class:`Supervisor`.

It checks arguments, starts and stops the engine (:mod:`supervisor._engine`),
and talks to it only through its inbox (spawn, cancel, publish, triggers)
and its outcomes (wait, subscribe).  Every method is safe to call from any
thread; the engine's own work happens on its loop thread.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import dill

import supervisor._aio as _aio
import supervisor._validate as _validate
from supervisor._engine.inbox import AddTrigger, Cancel, Publish
import supervisor._engine.metrics as _metrics
import supervisor._engine.spawning as _spawn
from supervisor._engine.loop import Engine
from supervisor._eventq import Subscription
from supervisor._engine.records import Settings
from supervisor._foreground import serve_until_signal
from supervisor._future import Future
from supervisor.errors import (NEVER_ALLOCATED, NOT_IN_LOG, NotRunningError,
                               SupervisorCrashedError, SupervisorError, not_logged,
                               unknown_saga)
from supervisor.log import UNLOGGED, logged_outcome
from supervisor.paths import DataDir
from supervisor.saga import Event, Outcome, Saga, Target

log = logging.getLogger(__name__)

DEFAULT_ENGINE = "thread"

Handler = Callable[[Any, int, int], Any]

__all__ = ["Supervisor", "Subscription", "Handler"]


ENGINES = ("process", "thread")


class Supervisor:
    """Runs sagas in worker processes with a durable log and a host pipe.

    ``Supervisor(data_dir, workers=2, host=[...argv...])`` then ``start()``
    (or ``with``).  `host` is the host program's argv (started as a
    subprocess), or ``host_fds=(write_fd, read_fd)`` for an already-open pair.

    `engine` says where the engine runs: ``"thread"`` (the default), a
    thread of the calling process, or ``"process"``, a supervisor process of
    its own that ``start()`` starts, so that the launcher's own threads never
    hold the engine up (this constructor then returns an instance of the
    subclass registered for that engine, with the same API).
    """

    _engines: ClassVar[dict[str, type[Supervisor]]] = {}
    engine = "thread"

    def __init_subclass__(cls, engine: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if engine is not None:  # a class that runs the engine elsewhere
            cls.engine = engine
            Supervisor._engines[engine] = cls

    def __new__(cls, *args: Any, engine: str | None = None, **kwargs: Any) -> Supervisor:
        if cls is Supervisor:
            engine = DEFAULT_ENGINE if engine is None else engine
            if engine not in ENGINES:
                raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
            if engine != "thread":
                if engine not in Supervisor._engines:  # (the package's Supervisor has it)
                    raise SupervisorError(f"engine={engine!r} is not loaded: import "
                                          "Supervisor from the supervisor package")
                cls = Supervisor._engines[engine]
        return super().__new__(cls)

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
    ) -> None:
        if engine not in (None, self.engine):
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
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
            node_lease=_validate.positive(node_lease, "node_lease"))
        _validate.clock_and_port(clock, metrics_port)
        if metrics_port is not None:
            _metrics.require()  # the extra is missing: say so now, not at start()
        self.data_dir = Path(data_dir)
        self.paths = DataDir(self.data_dir)
        self._engine = Engine(self.paths, self.settings)
        self._engine.register = self._registered

    @property
    def stats(self) -> dict[str, int]:
        """The engine's counters."""
        return self._engine.stats

    # -- properties -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``running``, ``stopping`` or ``stopped``."""
        return self._engine.life.state

    @property
    def error(self) -> BaseException | None:
        """What stopped it on its own (restart intensity, the log), or None."""
        return self._engine.life.error

    @property
    def shm_name(self) -> str:
        if self._engine.shared is None:
            raise NotRunningError("the supervisor has not started")
        return self._engine.shared.name

    @property
    def db_path(self) -> Path:
        return self.paths.db

    @property
    def health_path(self) -> Path:
        return self.paths.health_file

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) where ``/metrics`` is served, once started; else None."""
        return self._engine.metrics.address if self._engine.metrics is not None else None

    @property
    def durability(self) -> str:
        return self.settings.durability

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Open the log, create the shared segment, start workers, the host and
        the loop.  On any error everything started so far is torn down."""
        if self.state != "new":
            raise NotRunningError(f"start() called on a supervisor that is {self.state}")
        self._engine.start()
        atexit.register(self._atexit)
        return self

    def stop(self, drain: bool = False, timeout: float = 5.0, suspend: bool = False) -> None:
        """Stop: with `drain`, let sagas in flight finish for up to `timeout`
        seconds; then fail the rest with "supervisor stopped" — every saga
        :meth:`spawn` accepted gets a logged outcome — or, with `suspend`,
        leave them in the log for the next start to resume, as after a crash.
        Closes the log, stops workers and host, unlinks the shared segment.
        Idempotent."""
        timeout = float(_validate.timeout(timeout, allow_none=False) or 0.0)
        if self.state in ("new", "stopped"):
            if self.state == "stopped" and self._engine.thread is not None:
                self._engine.teardown()  # stopped on its own: its word in health goes now
            self._engine.life.state = "stopped"
            return
        self._engine.stop(bool(drain), timeout, bool(suspend))
        atexit.unregister(self._atexit)

    def _atexit(self) -> None:
        """The interpreter exits with the supervisor running (a script that
        forgot stop()): stop it, so no worker, host or segment outlives us."""
        if self.state in ("running", "stopping"):
            self.stop()

    def __enter__(self) -> Supervisor:
        return self.start() if self.state == "new" else self

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
        ``replay=False`` such sagas are failed instead.

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
        self._engine.kinds[name] = (factory, bool(replay))
        if limit is not None:
            self._engine.limits[name] = limit
        else:
            self._engine.limits.pop(name, None)
        self._engine.fleet.register(name, orphan, portable, fleet_cap)

    def register_handler(self, target: Target, fn: Handler) -> None:
        """Handle LAUNCHER_SELF or SRV commands in the supervisor (on its loop
        thread): ``fn(command, saga_id, step)`` returns the echo's data (or
        raises, which fails that saga)."""
        if target not in (Target.LAUNCHER_SELF, Target.SRV):
            raise ValueError(f"handlers are for LAUNCHER_SELF or SRV, not {target!r}")
        if not callable(fn):
            raise TypeError("handler must be callable")
        self._engine.handlers[Target(target)] = fn

    def add_trigger(self, saga_factory: Callable[[Event], Saga],
                    predicate: Callable[[Event], bool]) -> None:
        """Spawn ``saga_factory(event)`` for every domain event on the bus
        matching `predicate` (lifecycle events never fire triggers); an
        in-flight saga of the same kind is evicted first.  Both run on the
        loop thread; one that raises is counted, logged and announced
        (``SagaSpawnFailed``)."""
        if not callable(saga_factory) or not callable(predicate):
            raise TypeError("add_trigger(saga_factory, predicate) takes two callables")
        if self.state in ("new", "starting"):
            self._engine.triggers.append((saga_factory, predicate))
        else:
            self._engine.inbox.post(AddTrigger(saga_factory, predicate))

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
            got = _spawn.keyed(self._engine, saga, key)
        else:
            got = _spawn.one(self._engine, saga)
        if durable:
            _spawn.logged(self._engine)
        return got

    def spawn_many(self, sagas: list[Saga], durable: bool = False) -> list[int]:
        """Start many sagas at once (one hand-over to the loop for all): their
        ids, in order.  All are encoded first, so a saga that cannot be
        shipped raises :class:`SpawnError` before any starts.  `durable`: as
        for :meth:`spawn`, return once all are in the log."""
        ids = _spawn.many(self._engine, sagas)
        if durable:
            _spawn.logged(self._engine)
        return ids

    def wait(self, saga_id: int, timeout: float | None = None) -> Outcome:
        """Block until `saga_id` has its terminal outcome (from any thread).
        Raises ``TimeoutError`` after `timeout` seconds,
        :class:`UnknownSagaError` (a ``ValueError``) for an id this supervisor
        and its log do not know, :class:`NotRunningError` before ``start()``."""
        sid = _validate.saga_id(saga_id)
        timeout = _validate.timeout(timeout)
        if self.state == "new":
            raise NotRunningError(f"wait({sid}) before start(): the supervisor has not started")
        found = self._engine.outcomes.waiter(sid)
        if isinstance(found, Outcome):
            return found
        if isinstance(found, Future):
            try:
                return found.result(timeout)  # type: ignore[no-any-return]
            except TimeoutError:
                raise TimeoutError(f"saga {sid} did not end within {timeout}s") from None
        logged = self._outcome_from_log(sid)
        if logged is None:
            raise unknown_saga(sid, NOT_IN_LOG)
        return logged

    def _outcome_from_log(self, saga_id: int) -> Outcome | None:
        log = self._engine.log  # (running: this run's own spawns may be on their way)
        before = log.run_first if log is not None else None
        if self.settings.log is not None:  # PostgreSQL: a short connection of its own
            from supervisor.log_pg_read import logged_outcome as pg_outcome

            row = pg_outcome(self.settings.log, saga_id, before)
        else:
            row = logged_outcome(self.db_path, saga_id, before)
        if row is None:
            return None
        if row[0] == UNLOGGED:
            raise not_logged(saga_id)
        if row[0] in ("running", "compensating"):
            if self.error is not None:
                raise SupervisorCrashedError(self.error)
            raise NotRunningError(f"saga {saga_id} is {row[0]} in the log but not in flight "
                                  "in this supervisor")
        return Outcome(saga_id, row[0], row[1])

    def _registered(self, blob: bytes) -> None:
        """A kind, handler or trigger shipped (dill) by the launcher of a
        supervisor process after it started: registered as if here."""
        what, args, kw = dill.loads(blob)
        if what not in ("register_kind", "register_handler", "add_trigger"):
            raise ValueError(f"cannot register {what!r}")
        getattr(self, what)(*args, **kw)

    def cancel(self, saga_id: int, reason: str = "cancelled", timeout: float = 10.0) -> bool:
        """Fail `saga_id` with ``cancelled: <reason>`` if it is still in
        flight.  True if this call decided its terminal, False if it had
        already ended."""
        sid = _validate.saga_id(saga_id)
        _validate.text(reason, "reason")
        limit = _validate.timeout(timeout, allow_none=False)
        engine = self._engine
        if engine.life.state != "running" or engine.shared is None:
            raise NotRunningError(f"cannot cancel: the supervisor is {engine.life.state}")
        if sid >= engine.shared.peek_next_id():
            raise unknown_saga(sid, NEVER_ALLOCATED)
        fut = Future()
        engine.inbox.post(Cancel(sid, reason, fut))
        try:
            return bool(fut.result(limit))
        except TimeoutError:
            raise TimeoutError(f"the supervisor did not answer cancel({sid}) within "
                               f"{timeout}s") from None

    def publish(self, event: Event) -> None:
        """Put a domain event on the bus (from any thread): offered to sagas
        listening to its kind and to triggers."""
        _validate.event(event)
        if self.state != "running":
            raise NotRunningError(f"cannot publish: the supervisor is {self.state}")
        self._engine.inbox.post(Publish(event))

    def subscribe(self, callback: Callable[[Event], Any] | None = None) -> Subscription:
        """Receive every bus event from now on (lifecycle and domain): as a
        queue to read, or, with `callback`, as calls to it on the loop thread
        (keep it quick; one that raises is counted and logged)."""
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        return self._engine.outcomes.subscribe(callback)

    # -- asyncio -----------------------------------------------------------------------------

    async def wait_async(self, saga_id: int, timeout: float | None = None) -> Outcome:
        """:meth:`wait` for asyncio: awaits the outcome without holding a thread."""
        return await _aio.wait_outcome(self._engine.outcomes, _validate.saga_id(saga_id),
                                       _validate.timeout(timeout), self._outcome_from_log)

    def events_async(self, idle: float | None = None) -> AsyncIterator[Event]:
        """Every bus event from now on, for ``async for``; ends when the
        supervisor stops (or after `idle` seconds without an event)."""
        return _aio.follow(self._engine.outcomes, idle)

    # -- looking at it ----------------------------------------------------------------------

    def in_flight(self) -> int:
        return len(self._engine.table)

    def health(self) -> dict[str, Any]:
        """A snapshot of the supervisor's processes and counters."""
        return self._engine.health()
