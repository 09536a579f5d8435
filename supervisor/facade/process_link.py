"""The engine in a supervisor process of its own: ``engine="process"``.

A launcher whose own threads keep the GIL busy would slow a thread engine's
every saga down.  This link starts a supervisor process
(``python -m supervisor.facade.serve``) that owns the log, the host pipe and
the workers; the launcher talks to it as :class:`SagaClient` does (ids and
claims from shared memory, requests over the control socket, spawns
pipelined, the outcome of every saga it spawned pushed to it).

Kind factories, local-target handlers and triggers are shipped to the
supervisor process with dill and run on its loop thread (they must not rely
on the launcher's memory); subscriber callbacks run in the launcher, on a
thread and connection of their own; a test clock is mirrored there.

Nothing is left behind when either process dies: the supervisor process sees
its stdin close and stops (``orphan="stop"`` fails what is in flight,
``"suspend"`` leaves it to the next start, ``"serve"`` serves on); the
launcher sees a dead supervisor process as :class:`SupervisorGoneError`, and
one that stopped on its own error as the thread engine reports it
(:class:`SupervisorCrashedError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import selectors
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from supervisor._engine.records import Settings, Stats
from supervisor._engine.registrations import Registration
from supervisor.common.subscription import Subscription
from supervisor.common.procs import start_time
from supervisor.wire.ship import named_error, ship
from supervisor.clients.async_client import AsyncSagaClient
from supervisor.clients.client import SagaClient
import supervisor.facade.aio as _aio
from supervisor.facade.child import last_words, launch
from supervisor.facade.early_subs import EarlySubscriptions
from supervisor.errors import (NotRunningError, SupervisorCrashedError, SupervisorError,
                               SupervisorGoneError)
from supervisor.health import idle_report, write_health_file
from supervisor.paths import DataDir
from supervisor.saga import Event, Outcome, Saga

log = logging.getLogger(__name__)


class ProcessLink:
    """Every call of the facade, on a supervisor process of its own."""

    engine = "process"

    def __init__(self, paths: DataDir, settings: Settings, orphan: str) -> None:
        clock = settings.clock
        if clock is time.monotonic:  # the default, said outright: nothing to mirror
            clock = None
            settings = dataclasses.replace(settings, clock=None)
        if clock is not None and not (hasattr(clock, "snapshot") and hasattr(clock, "attach")):
            raise ValueError("clock= crosses to the supervisor process only as a "
                             "supervisor.testing.Clock (its advances are sent there)")
        self.paths = paths
        self.settings = settings
        self.suspended = False
        self._clock = clock
        self._orphan = orphan
        # registrations made before start(): shipped with it
        self._registered: list[Registration] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: SagaClient | None = None
        self._subs: list[SagaClient] = []
        self._early = EarlySubscriptions(self._subscriber_failed)  # made before start()
        self._aclient: AsyncSagaClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._state = "new"
        self._info: dict[str, Any] = {}
        self._crash: BaseException | None = None
        self._crash_lock = threading.Lock()
        self._final: dict[str, Any] | None = None  # its health report once stopped
        self._final_metrics: str | None = None  # and its metrics
        self._wrote_health = False
        # subscriber callbacks run here, in the launcher: their errors are
        # counted here and added to the engine's stats["subscriber_errors"]
        self._subscriber_errors = 0

    # -- what it is -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def shm_name(self) -> str:
        if "shm" not in self._info:
            raise NotRunningError("the supervisor has not started")
        return str(self._info["shm"])

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        addr = self._info.get("metrics")
        running = self.state in ("running", "stopping")  # (its server closes with it)
        return (str(addr[0]), int(addr[1])) if addr and running else None

    @property
    def state(self) -> str:
        if self._state == "running" and self._proc is not None and \
                self._proc.poll() is not None:
            return "stopped"
        return self._state

    @property
    def error(self) -> BaseException | None:
        """Why the supervisor process is gone when nobody stopped it: the
        engine's own error where it said one, else SupervisorGoneError."""
        proc = self._proc
        if self._state == "stopped" and proc is not None:
            return self._crash  # (kept once stopped, as the thread engine keeps its own)
        if proc is None or self._state != "running" or proc.poll() is None:
            return None
        with self._crash_lock:  # (the watcher thread asks too)
            if self._crash is None:
                last = ""
                while line := self._line(0.0):
                    last = self._status(line)
                word, _, rest = last.partition(" ")
                self._crash = named_error(rest) if word == "crashed" else self._died()
        return self._crash

    @property
    def run_first(self) -> int | None:
        return None  # (the supervisor process answers for its own run)

    # -- start and stop ---------------------------------------------------------------------

    def register(self, reg: Registration) -> None:
        """Kept for the start (before it), or shipped now (once running)."""
        if self._state == "new":
            self._registered.append(reg)
            return
        blob = ship(type(reg).__name__, reg)
        self._do("register", lambda c: c.register(blob))

    def _clock_moved(self) -> None:
        client, clock = self._client, self._clock
        if client is not None and clock is not None and self._state == "running":
            with contextlib.suppress(NotRunningError):
                client.clock_moved(clock.snapshot()[2])

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """The supervisor process exited: if nobody stopped it, leave the
        reason where the health probe looks, under the launcher's pid, for as
        long as the launcher lives (the thread engine leaves it there too)."""
        proc.wait()
        err = self.error if self._state == "running" else None
        if err is None:
            return
        report = idle_report(os.getpid(), "stopped", err, {})
        report["supervisor"]["create_time"] = start_time(os.getpid())
        write_health_file(self.paths.health_file, report)
        self._wrote_health = True

    def start(self) -> None:
        s = self.settings
        blob = ship("the kinds, handlers and triggers", {
            "data_dir": str(self.paths.root), "settings": dataclasses.replace(s, clock=None),
            "registered": self._registered, "orphan": self._orphan,
            "early_subscribers": self._early.hold(),
            "clock": self._clock.snapshot() if self._clock is not None else None})
        self._state = "starting"
        proc = self._proc = launch(blob, s.host_fds)
        wait = s.start_timeout + 30.0
        line = self._line(wait)
        word, _, rest = line.partition(" ")
        if word != "ready":
            self._state = "stopped"
            silent = proc.poll() is None  # (alive: it never said it was ready)
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._early.end()
            if word == "error":  # the engine's own error, by name
                raise named_error(rest)
            if silent:
                raise SupervisorError(f"the supervisor process did not say it was ready "
                                      f"within {wait:g}s (start_timeout + 30): killed it")
            raise SupervisorError("the supervisor process did not start: it exited")
        self._info = json.loads(rest or "{}")
        self._state = "running"
        threading.Thread(target=self._watch, args=(proc,), name="saga-supervisor-watch",
                         daemon=True).start()
        try:
            self._client = SagaClient(self.paths.root)
        except BaseException:
            self._early.end()
            self.stop(False, 5.0, False)  # started, but unreachable: leave nothing behind
            raise
        self._subs += self._early.connect(self.paths.root)
        if self._clock is not None:  # its advances go to the supervisor process's mirror
            self._clock.attach(self._clock_moved)

    def _status(self, line: str) -> str:
        """Take a status line of the stopping supervisor process: its final
        health report is kept for health() and stats once it is gone."""
        word, _, rest = line.partition(" ")
        if word == "final":
            try:
                final = json.loads(rest)
                final["supervisor"]["alive"] = False  # (it says this as it exits)
                self._final = final
            except (ValueError, TypeError, KeyError):
                pass
        elif word == "final_metrics":
            try:
                self._final_metrics = str(json.loads(rest))
            except ValueError:
                pass
        elif word == "crashed" and self._crash is None:  # (said as stop() was called)
            self._crash = named_error(rest)
        return line

    def _line(self, timeout: float) -> str:
        """The supervisor process's next status line ('' at EOF or timeout)."""
        assert self._proc is not None and self._proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return ""
        return self._proc.stdout.readline().decode("utf-8", "replace").strip()

    def stop(self, drain: bool, timeout: float, suspend: bool) -> None:
        proc = self._proc
        if self._state in ("new", "stopped") or proc is None:
            self._state = "stopped"
            self._early.end()  # (made before a start that never came)
            return
        _ = self.error  # (if it stopped on its own, or died: kept for after the stop)
        self._state = "stopping"
        self.suspended = suspend
        if self._client is not None and proc.poll() is None:
            try:  # spawns are pipelined: let the supervisor take those sent so far
                self._client.seal()
            except (NotRunningError, OSError, TimeoutError):
                pass
        assert proc.stdin is not None
        try:
            proc.stdin.write(f"stop {int(drain)} {timeout} {int(suspend)}\n".encode())
        except (BrokenPipeError, ValueError):
            pass
        try:
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            proc.wait(timeout + 60.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - wedged: do not leak it
            log.error("supervisor process %d did not stop; killing it", proc.pid)
            proc.kill()
            proc.wait()
        # closed once it is gone: a wait() in flight gets the outcome the stop
        # logged, and a subscriber the stop's events, as on the thread engine
        for c in [self._client, *self._subs,
                  self._aclient.core if self._aclient is not None else None]:
            if c is not None:
                c.close()
        for line in last_words(proc):
            self._status(line)
        self._state = "stopped"
        if self._wrote_health:  # the launcher's word on a crash: gone with its stop
            try:
                self.paths.health_file.unlink()
            except OSError:
                pass

    # -- the API, through the control socket ----------------------------------------------

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

    def _api(self, verb: str) -> SagaClient:
        if self._client is None or self._state != "running":
            raise NotRunningError(f"cannot {verb}: the supervisor is {self.state}")
        return self._client

    def _do(self, verb: str, fn: Callable[[SagaClient], Any]) -> Any:
        try:
            return fn(self._api(verb))
        except (NotRunningError, OSError) as exc:
            raise self._gone(exc) from exc

    def spawn(self, saga: Saga, key: str | None, durable: bool) -> int:
        return int(self._do("spawn", lambda c: c.spawn(saga, key, durable)))

    def spawn_many(self, sagas: list[Saga], durable: bool) -> list[int]:
        return list(self._do("spawn", lambda c: c.spawn_many(sagas, durable)))

    def wait(self, saga_id: int, timeout: float | None) -> Outcome | None:
        client = self._client  # (None: the facade reads the log)
        if self._state == "stopping" and client is not None:  # (it is closed once stopped:
            try:  # the outcome the stop logs comes here, or the log has it by then)
                return client.wait(saga_id, timeout)
            except (NotRunningError, OSError):
                return None
        if self._state == "stopped":
            return None
        try:
            out: Outcome = self._do("wait", lambda c: c.wait(saga_id, timeout))
        except (SupervisorGoneError, SupervisorCrashedError):
            if self._owes(saga_id):
                raise
            return None
        return out

    def _owes(self, saga_id: int) -> bool:
        """It stopped on its own or died: a saga it owed this launcher has no
        outcome (the error says why); any other is the log's to answer for."""
        client = self._client
        return client is not None and saga_id in client.core.outcomes or \
            self.state != "stopped"

    def cancel(self, saga_id: int, reason: str, timeout: float) -> bool:
        return bool(self._do("cancel", lambda c: c.cancel(saga_id, reason, timeout=timeout)))

    def publish(self, event: Event) -> None:
        self._do("publish", lambda c: c.publish(event))

    def _async(self, verb: str) -> AsyncSagaClient:
        """A connection for this event loop (one a loop), while it runs or stops."""
        if self._state != "stopping":
            self._api(verb)
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            if self._aclient is not None:
                self._aclient.core.close()
            self._aclient, self._aloop = AsyncSagaClient(self.paths.root), loop
        return self._aclient

    async def wait_async(self, saga_id: int, timeout: float | None) -> Outcome | None:
        if self._state == "stopped":
            return None
        try:
            try:
                return await self._async("wait").wait(saga_id, timeout)
            except (NotRunningError, OSError) as exc:
                if self._state == "stopping":  # (closed: the log has it once stopped)
                    return None
                raise self._gone(exc) from exc
        except (SupervisorGoneError, SupervisorCrashedError):
            if self._owes(saga_id):
                raise
            return None

    def events_async(self, idle: float | None) -> AsyncIterator[Event]:
        if self._state == "new":  # subscribed as first awaited: held if before start()
            return _aio.follow(self._subscribe_into, idle)
        return self._async("subscribe").events(idle)

    def _subscribe_into(self, sink: Any) -> Subscription:
        if self._state == "new":
            return self._early.add(None, sink)
        self._api("subscribe")
        try:
            c = SagaClient(self.paths.root)
            self._subs.append(c)
            c._subscribe_into(sink)
        except (NotRunningError, OSError) as exc:
            raise self._gone(exc) from exc
        return Subscription(sink, c.close)

    def subscribe(self, callback: Callable[[Event], Any] | None) -> Subscription:
        """On a connection of its own; a callback runs on a thread of this
        (the launcher's) process (one that raises is logged; the stream goes on).
        Before start(), one whose events the supervisor process holds from its
        start until it is connected."""
        if self._state == "new":
            return self._early.add(callback)
        if self._state != "stopping":  # (while it stops: its last events, then the end)
            self._api("subscribe")
        try:
            c = SagaClient(self.paths.root)
        except (NotRunningError, OSError) as exc:
            if self._state != "stopping":
                raise self._gone(exc) from exc
            ended = Subscription(callback=callback)  # (gone already: nothing more comes)
            ended.end()
            return ended
        self._subs.append(c)
        return Subscription(c.subscribe_queue(), c.close, callback, pump=True,
                            on_error=self._subscriber_failed)

    def _subscriber_failed(self) -> None:
        self._subscriber_errors += 1

    # -- looking at it ------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Fetched while it runs; once stopped, the supervisor process's last
        report (made after its stop); before start, a report of nothing yet."""
        if self.state != "running":
            return self._final or idle_report(self.pid, self.state, self.error, dict(Stats()))
        report: dict[str, Any] = self._do("read health", lambda c: c.health())
        return report

    def stats(self) -> dict[str, int]:
        """A snapshot of the engine's counters, fetched."""
        stats = Stats()
        stats.update(self.health()["stats"])
        stats["subscriber_errors"] += self._subscriber_errors
        return stats

    def in_flight(self) -> int:
        return int(self.health()["supervisor"]["sagas_in_flight"])

    def metrics(self) -> str:
        if self.state != "running":
            if self._final_metrics is None:
                raise NotRunningError(f"cannot read metrics: the supervisor is {self.state}")
            return self._final_metrics
        return str(self._do("read metrics", lambda c: c.metrics()))
