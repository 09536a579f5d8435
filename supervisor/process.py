"""The engine in a supervisor process of its own: ``Supervisor(...,
engine="process")``, which returns a :class:`SupervisorProcess`.

With ``engine="thread"`` (the default) the engine is a thread of the
launcher's process, so a launcher whose own threads keep the GIL busy slows
every saga down (each hand-over between threads can wait a whole switch
interval, 5 ms).  ``SupervisorProcess`` has the same API, but ``start()``
starts a separate supervisor process (``python -m supervisor._serve``) that
owns the log, the host pipe and the workers; the launcher talks to it as
:class:`SagaClient` does — ids and claims straight from shared memory,
requests over the control socket (spawns pipelined), and the outcome of
every saga it spawned pushed to it as soon as it is committed.

Where user code runs: saga code in the workers, as always.  Kind factories,
local-target handlers and trigger predicates and factories are shipped to the
supervisor process with dill (with the start, or over the control socket
when registered later) and run there, on its loop thread — they must not
rely on the launcher's memory.  Subscriber callbacks run in the launcher, on
a thread and connection of their own.

Nothing is left behind when either process dies: the supervisor process
watches the launcher through its stdin (EOF: the launcher exited or was
killed) and stops cleanly (``orphan="stop"``: failing what is in flight;
``"suspend"``: leaving it in the log for the next start to resume), or
keeps serving other clients with ``orphan="serve"``; the launcher sees a
dead supervisor process as :class:`SupervisorGoneError` from its calls, and
one that stopped on its own error as the thread engine reports it
(:class:`SupervisorCrashedError`).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import supervisor._validate as _validate
from supervisor._procs import start_time
from supervisor._ship import named_error, ship
from supervisor.async_client import AsyncSagaClient
from supervisor._events import EventStream
from supervisor._eventq import Subscription
from supervisor.client import SagaClient
from supervisor.core import Supervisor
from supervisor.health import write_health_file
from supervisor.errors import (NOT_IN_LOG, NotRunningError, SupervisorCrashedError,
                               SupervisorError, SupervisorGoneError, stopped_before_end,
                               unknown_saga)
from supervisor.saga import Event, Outcome, Saga, Target

log = logging.getLogger(__name__)

# Supervisor is re-exported: the package's Supervisor comes from here, so that
# loading it registers engine="process" (core cannot import this module back)
__all__ = ["Supervisor", "SupervisorProcess", "SupervisorGoneError", "ORPHAN"]


# what the supervisor process does when its launcher dies: stop (failing what
# is in flight), suspend (leaving it in the log for the next start), serve on
ORPHAN = ("stop", "suspend", "serve")


class SupervisorProcess(Supervisor, engine="process"):
    """A supervisor in a process of its own; see the module's documentation.

    ``Supervisor(data_dir, ...)`` returns one (the default engine);
    ``SupervisorProcess(data_dir, workers=2, host=[...], orphan="stop",
    **options)`` says so outright.  It takes :class:`Supervisor`'s options
    (``clock`` as a :class:`supervisor.testing.Clock`, mirrored in the
    supervisor process: every advance is sent there)."""

    def __init__(self, data_dir: str | os.PathLike[str], workers: int = 2,
                 host: list[str] | None = None, *, orphan: str = "stop",
                 engine: str | None = None, **options: Any) -> None:
        if orphan not in ORPHAN:
            raise ValueError(f"orphan must be one of {', '.join(ORPHAN)}, got {orphan!r}")
        clock = options.get("clock")
        if clock is not None and not (hasattr(clock, "snapshot") and hasattr(clock, "attach")):
            raise ValueError("clock= crosses to the supervisor process only as a "
                             "supervisor.testing.Clock (its advances are sent there)")
        # every option checked here, the way the supervisor process will take it
        super().__init__(data_dir, workers, host, engine=engine, **options)
        self._clock = clock
        self._options = dict(options, workers=workers, host=host, engine="thread")
        self._options.pop("clock", None)
        self._orphan = orphan
        # registrations made before start(), (args, keywords) each: shipped with it
        self._kinds: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._handlers: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._triggers: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: SagaClient | None = None
        self._subs: list[SagaClient] = []
        self._aclient: AsyncSagaClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._state = "new"
        self._suspended = False  # (its last stop() left the sagas in flight to the next start)
        self._info: dict[str, Any] = {}
        self._crash: BaseException | None = None
        self._crash_lock = threading.Lock()
        self._wrote_health = False

    # -- what the supervisor process needs before it starts --------------------------

    def register_kind(self, kind: type[Saga] | str, factory: Any = None, replay: bool = True,
                      **limits: Any) -> None:
        """As :meth:`Supervisor.register_kind`; the factory is shipped to the
        supervisor process and runs there."""
        super().register_kind(kind, factory, replay, **limits)  # checks the arguments
        self._register("register_kind", (kind, factory, replay), limits, self._kinds)

    def register_handler(self, target: Target, fn: Callable[[Any, int, int], Any]) -> None:
        """As :meth:`Supervisor.register_handler`; `fn` is shipped to the
        supervisor process and runs there, on its loop thread."""
        super().register_handler(target, fn)
        self._register("register_handler", (target, fn), {}, self._handlers)

    def add_trigger(self, saga_factory: Callable[[Event], Saga],
                    predicate: Callable[[Event], bool]) -> None:
        """As :meth:`Supervisor.add_trigger`; both are shipped to the
        supervisor process and run there."""
        if not callable(saga_factory) or not callable(predicate):
            raise TypeError("add_trigger(saga_factory, predicate) takes two callables")
        self._register("add_trigger", (saga_factory, predicate), {}, self._triggers)

    def _register(self, what: str, args: tuple[Any, ...], kw: dict[str, Any],
                  before_start: list[Any]) -> None:
        """Kept for the start (before it), or shipped now (once running)."""
        if self._state == "new":
            before_start.append((args, kw))
            return
        blob = ship(what, (what, args, kw))
        self._do(lambda c: c._call("register", blob))

    # -- start and stop ------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The supervisor process's pid, once started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def shm_name(self) -> str:
        if "shm" not in self._info:
            raise NotRunningError("the supervisor has not started")
        return str(self._info["shm"])

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) where ``/metrics`` is served, once started; else None."""
        addr = self._info.get("metrics")
        return (str(addr[0]), int(addr[1])) if addr else None

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``running``, ``stopping`` or ``stopped``
        (also once the supervisor process exited on its own: see `error`)."""
        if self._state == "running" and self._proc is not None and \
                self._proc.poll() is not None:
            return "stopped"
        return self._state

    @property
    def error(self) -> BaseException | None:
        """Why the supervisor process is gone when nobody stopped it, or None:
        the engine's own error where it said one (``RestartIntensityError``,
        ``LogError``...), else :class:`SupervisorGoneError`."""
        proc = self._proc
        if proc is None or self._state != "running" or proc.poll() is None:
            return None
        with self._crash_lock:  # (the watcher thread asks too)
            if self._crash is None:
                last = ""
                while line := self._line(0.0):
                    last = line
                word, _, rest = last.partition(" ")
                self._crash = named_error(rest) if word == "crashed" else self._died()
        return self._crash

    def _clock_moved(self) -> None:
        client, clock = self._client, self._clock
        if client is not None and clock is not None and self._state == "running":
            try:
                client._send(("clock", 0, clock.snapshot()[2]))
            except NotRunningError:
                pass

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """The supervisor process exited: if nobody stopped it, leave the
        reason where the health probe looks, under the launcher's pid, for as
        long as the launcher lives (the thread engine leaves it there too)."""
        proc.wait()
        err = self.error if self._state == "running" else None
        if err is None:
            return
        me = os.getpid()
        write_health_file(self.paths.health_file, {
            "healthy": False, "time": time.time(), "workers": [], "host": None,
            "stats": {}, "problems": [f"stopped: {type(err).__name__}: {err}"],
            "supervisor": {"pid": me, "create_time": start_time(me), "state": "stopped",
                           "sagas_in_flight": 0, "engine": "process"}})
        self._wrote_health = True

    def start(self) -> SupervisorProcess:
        if self._state != "new":
            raise NotRunningError(f"start() called on a supervisor that is {self.state}")
        blob = ship("the kinds, handlers and triggers", {
            "data_dir": str(self.data_dir), "options": self._options, "kinds": self._kinds,
            "handlers": self._handlers, "triggers": self._triggers, "orphan": self._orphan,
            "clock": self._clock.snapshot() if self._clock is not None else None})
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self._state = "starting"
        fds = self._options.get("host_fds")
        proc = self._proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor._serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, bufsize=0, env=env, pass_fds=tuple(fds) if fds else (),
            start_new_session=True)  # a terminal's Ctrl-C is the launcher's to handle
        assert proc.stdin is not None
        try:
            proc.stdin.write(len(blob).to_bytes(4, "big") + blob)
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._line(float(self._options.get("start_timeout", 60.0)) + 30.0)
        word, _, rest = line.partition(" ")
        if word != "ready":
            self._state = "stopped"
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
            if word == "error":  # the engine's own error, by name
                raise named_error(rest)
            raise SupervisorError("the supervisor process did not start: it exited")
        self._info = json.loads(rest or "{}")
        self._state = "running"
        threading.Thread(target=self._watch, args=(proc,), name="saga-supervisor-watch",
                         daemon=True).start()
        try:
            self._client = SagaClient(self.data_dir)
        except BaseException:
            self.stop()  # started, but unreachable: leave nothing behind
            raise
        if self._clock is not None:  # its advances go to the supervisor process's mirror
            self._clock.attach(self._clock_moved)
        atexit.register(self.stop)
        return self

    def _line(self, timeout: float) -> str:
        """The supervisor process's next status line ('' at EOF or timeout)."""
        assert self._proc is not None and self._proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return ""
        return self._proc.stdout.readline().decode("utf-8", "replace").strip()

    def stop(self, drain: bool = False, timeout: float = 5.0, suspend: bool = False) -> None:
        """Stop the supervisor process (see :meth:`Supervisor.stop`) and wait
        for it to exit.  Idempotent."""
        proc = self._proc
        if self._state in ("new", "stopped") or proc is None:
            self._state = "stopped"
            return
        self._state = "stopping"
        self._suspended = bool(suspend)
        if self._client is not None and proc.poll() is None:
            try:  # spawns are pipelined: let the supervisor take those sent so far
                self._client.seal()
            except (NotRunningError, OSError, TimeoutError):
                pass
        for c in [self._client, *self._subs,
                  self._aclient._client if self._aclient is not None else None]:
            if c is not None:
                c.close()
        assert proc.stdin is not None
        try:
            proc.stdin.write(f"stop {int(bool(drain))} {float(timeout)} "
                             f"{int(bool(suspend))}\n".encode())
        except (BrokenPipeError, ValueError):
            pass
        try:
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            proc.wait(float(timeout) + 60.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - wedged: do not leak it
            log.error("supervisor process %d did not stop; killing it", proc.pid)
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self._state = "stopped"
        if self._wrote_health:  # the launcher's word on a crash: gone with its stop
            try:
                self.paths.health_file.unlink()
            except OSError:
                pass
        atexit.unregister(self.stop)

    def __enter__(self) -> SupervisorProcess:
        return self.start() if self._state == "new" else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the API, through the control socket ------------------------------------------------

    def _gone(self, exc: BaseException) -> BaseException:
        """A call failed: if the supervisor process is dead, say so by name."""
        proc = self._proc
        if proc is None or self._state != "running":
            return exc
        try:
            proc.wait(0.5)
        except subprocess.TimeoutExpired:
            return exc
        crash = self.error  # it stopped on its own error (as the thread engine says), or died
        if crash is None or isinstance(crash, SupervisorGoneError):
            return crash or exc
        return SupervisorCrashedError(crash)

    def _died(self) -> SupervisorGoneError:
        assert self._proc is not None
        code = self._proc.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        unconfirmed = self._client.unconfirmed if self._client is not None else []
        return SupervisorGoneError(f"the supervisor process (pid {self._proc.pid}) died "
                                   f"({how}): the sagas it logged are recovered at its next "
                                   "start", unconfirmed)

    def _api(self) -> SagaClient:
        if self._client is None or self._state != "running":
            raise NotRunningError(f"the supervisor is {self.state}")
        return self._client

    def _do(self, fn: Callable[[SagaClient], Any]) -> Any:
        try:
            return fn(self._api())
        except (NotRunningError, OSError) as exc:
            raise self._gone(exc) from exc

    def spawn(self, saga: Saga, key: str | None = None, durable: bool = False) -> int:
        return int(self._do(lambda c: c.spawn(saga, key, durable)))

    def spawn_many(self, sagas: list[Saga], durable: bool = False) -> list[int]:
        return list(self._do(lambda c: c.spawn_many(sagas, durable)))

    def wait(self, saga_id: int, timeout: float | None = None) -> Outcome:
        """As :meth:`Supervisor.wait`; once stopped, the outcome is read from
        the log, as the thread engine does."""
        if self._state == "new":
            raise NotRunningError(f"wait({_validate.saga_id(saga_id)}) before start(): the "
                                  "supervisor has not started")
        if self._state in ("stopped", "stopping"):
            sid = _validate.saga_id(saga_id)
            try:
                logged = self._outcome_from_log(sid)
            except NotRunningError:  # in flight when it stopped: said as the thread engine does
                if self._suspended:
                    raise stopped_before_end(True) from None
                raise
            if logged is None:
                raise unknown_saga(sid, NOT_IN_LOG)
            return logged
        out: Outcome = self._do(lambda c: c.wait(saga_id, timeout))
        return out

    def cancel(self, saga_id: int, reason: str = "cancelled", timeout: float = 10.0) -> bool:
        limit = _validate.timeout(timeout, allow_none=False)
        return bool(self._do(lambda c: c.cancel(saga_id, reason, timeout=limit)))

    def publish(self, event: Event) -> None:
        _validate.event(event)
        self._do(lambda c: c.publish(event))

    def metrics(self) -> str:
        """The Prometheus exposition (needs ``metrics_port``)."""
        return str(self._do(lambda c: c.metrics()))

    def _async(self) -> AsyncSagaClient:
        """A connection for the running event loop (one per loop: its answers
        are handed to that loop)."""
        self._api()
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            if self._aclient is not None:
                self._aclient._client.close()
            self._aclient, self._aloop = AsyncSagaClient(self.data_dir), loop
        return self._aclient

    async def wait_async(self, saga_id: int, timeout: float | None = None) -> Outcome:
        """:meth:`wait` for asyncio, holding no thread while it waits."""
        try:
            return await self._async().wait(saga_id, timeout)
        except (NotRunningError, OSError) as exc:
            raise self._gone(exc) from exc

    def events_async(self, idle: float | None = None) -> AsyncIterator[Event]:
        """Bus events from now on, for ``async for`` (see :meth:`events`)."""
        return self._async().events(idle)

    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = self._do(lambda c: c.health())
        return report

    @property
    def stats(self) -> dict[str, int]:
        """The engine's counters (a snapshot, fetched)."""
        stats = dict(self.health()["stats"])
        stats.setdefault("unknown_echo", stats.get("unknown_answers", 0))  # deprecated name
        return stats

    def in_flight(self) -> int:
        return int(self.health()["supervisor"]["sagas_in_flight"])

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Bus events from now on (a connection of their own); ends when the
        supervisor stops or no event came for `timeout` seconds."""
        self._api()
        c = SagaClient(self.data_dir)
        self._subs.append(c)
        return c.events(timeout)

    def subscribe(self, callback: Callable[[Event], Any] | None = None) -> Subscription:
        """As :meth:`Supervisor.subscribe`, on a connection of its own: a
        :class:`supervisor.Subscription` to read, or, with
        `callback`, calls to it on a thread of this (the launcher's) process
        (one that raises is logged; the stream goes on)."""
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        self._api()
        try:
            c = SagaClient(self.data_dir)
        except (NotRunningError, OSError) as exc:
            raise self._gone(exc) from exc
        self._subs.append(c)
        return EventStream(c, callback)
