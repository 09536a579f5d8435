"""SupervisorProcess: the engine in a supervisor process of its own.

``Supervisor`` runs its engine as a thread of the launcher's process, so a
launcher whose own threads keep the GIL busy slows every saga down (each
hand-over between threads can wait a whole switch interval, 5 ms).
``SupervisorProcess`` has the same API, but ``start()`` starts a separate
supervisor process (``python -m supervisor._serve``) that owns the log, the
host pipe and the workers; the launcher talks to it as :class:`SagaClient`
does — ids and claims straight from shared memory, requests over the control
socket, and the outcome of every saga it spawned pushed to it as soon as it
is committed.

Where user code runs: saga code in the workers, as always.  Kind factories,
local-target handlers and trigger predicates and factories are shipped to the
supervisor process with dill when it starts (register them before
``start()``) and run there, on its loop thread — they must not rely on the
launcher's memory.  Subscriber callbacks run in the launcher, on a thread of
their own fed from the bus.

Nothing is left behind when either process dies: the supervisor process
watches the launcher through its stdin (EOF: the launcher exited or was
killed) and stops cleanly, or keeps serving other clients with
``orphan="serve"``; the launcher sees a dead supervisor process as
:class:`SupervisorGoneError` from its calls.
"""

from __future__ import annotations

import atexit
import importlib
import io
import logging
import os
import selectors
import subprocess
import sys
import threading
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import dill

from supervisor.async_client import AsyncSagaClient
from supervisor.client import SagaClient
from supervisor.core import Supervisor
from supervisor.errors import NotRunningError, SupervisorError
from supervisor.saga import Event, Outcome, Saga, Target

log = logging.getLogger(__name__)


class _Pickler(dill.Pickler):  # type: ignore[misc]
    """dill, but an importable module is pickled by name: dill pickles the
    modules of a project (not installed in site-packages) by value, which
    fails on their native handles.  Lambdas and closures still travel by
    value; what they name from modules is imported in the supervisor."""

    dispatch = dill.Pickler.dispatch.copy()


def _save_module(pickler: Any, obj: types.ModuleType) -> None:
    if obj.__name__ != "__main__" and sys.modules.get(obj.__name__) is obj:
        pickler.save_reduce(importlib.import_module, (obj.__name__,), obj=obj)
    else:
        dill._dill.save_module(pickler, obj)


_Pickler.dispatch[types.ModuleType] = _save_module


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, recurse=True).dump(obj)
    return buf.getvalue()


class SupervisorGoneError(SupervisorError):
    """The supervisor process died (killed, or crashed) under the launcher."""


class SupervisorProcess:
    """A supervisor in a process of its own; see the module's documentation.

    ``SupervisorProcess(data_dir, workers=2, host=[...], orphan="stop",
    **options)`` takes :class:`Supervisor`'s options (all but ``clock``)."""

    def __init__(self, data_dir: str | os.PathLike[str], workers: int = 2,
                 host: list[str] | None = None, *, orphan: str = "stop",
                 **options: Any) -> None:
        if orphan not in ("stop", "serve"):
            raise ValueError(f"orphan must be 'stop' or 'serve', got {orphan!r}")
        if options.get("clock") is not None:
            raise ValueError("clock= cannot cross processes: use an in-process Supervisor "
                             "with a test clock")
        # every option checked here, the way the supervisor process will take it
        self._probe = Supervisor(data_dir, workers, host, **options)
        self.data_dir = Path(data_dir)
        self._options = dict(options, workers=workers, host=host)
        self._orphan = orphan
        self._kinds: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._handlers: list[tuple[Target, Callable[..., Any]]] = []
        self._triggers: list[tuple[Callable[[Event], Saga], Callable[[Event], bool]]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: SagaClient | None = None
        self._subs: list[SagaClient] = []
        self._aclient: AsyncSagaClient | None = None
        self.state = "new"

    # -- what the supervisor process needs before it starts --------------------------

    def register_kind(self, kind: type[Saga] | str, factory: Any = None, replay: bool = True,
                      **limits: Any) -> None:
        """As :meth:`Supervisor.register_kind` (before ``start()``); the
        factory is shipped to the supervisor process and runs there."""
        self._probe.register_kind(kind, factory, replay, **limits)  # checks the arguments
        self._before_start("register_kind")
        self._kinds.append(((kind, factory, replay), limits))

    def register_handler(self, target: Target, fn: Callable[[Any, int, int], Any]) -> None:
        """As :meth:`Supervisor.register_handler` (before ``start()``); `fn`
        runs in the supervisor process, on its loop thread."""
        self._probe.register_handler(target, fn)
        self._before_start("register_handler")
        self._handlers.append((target, fn))

    def add_trigger(self, saga_factory: Callable[[Event], Saga],
                    predicate: Callable[[Event], bool]) -> None:
        """As :meth:`Supervisor.add_trigger` (before ``start()``); both run in
        the supervisor process."""
        if not callable(saga_factory) or not callable(predicate):
            raise TypeError("add_trigger(saga_factory, predicate): both must be callable")
        self._before_start("add_trigger")
        self._triggers.append((saga_factory, predicate))

    def _before_start(self, what: str) -> None:
        if self.state != "new":
            raise NotRunningError(f"{what}() must come before start(): it is shipped to "
                                  "the supervisor process when that starts")

    # -- start and stop ------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The supervisor process's pid, once started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def db_path(self) -> Path:
        return self._probe.db_path

    @property
    def health_path(self) -> Path:
        return self._probe.health_path

    @property
    def durability(self) -> str:
        return self._probe.durability

    @property
    def error(self) -> BaseException | None:
        """Why the supervisor process is gone when nobody stopped it, or None."""
        proc = self._proc
        if proc is None or self.state != "running" or proc.poll() is None:
            return None
        return self._gone(NotRunningError("the supervisor process exited"))

    def start(self) -> SupervisorProcess:
        if self.state != "new":
            raise NotRunningError(f"start() called on a supervisor that is {self.state}")
        try:
            blob = _dumps({"data_dir": str(self.data_dir), "options": self._options,
                           "kinds": self._kinds, "handlers": self._handlers,
                           "triggers": self._triggers, "orphan": self._orphan})
        except Exception as exc:
            raise SupervisorError(f"the kinds, handlers and triggers cannot be shipped to the "
                                  f"supervisor process: {type(exc).__name__}: {exc}") from exc
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.state = "starting"
        proc = self._proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor._serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env)
        assert proc.stdin is not None
        try:
            proc.stdin.write(len(blob).to_bytes(4, "big") + blob)
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._line(float(self._options.get("start_timeout", 60.0)) + 30.0)
        if line != "ready":
            self.state = "stopped"
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
            raise SupervisorError(f"the supervisor process did not start: "
                                  f"{line.removeprefix('error ') or 'it exited'}")
        self.state = "running"
        try:
            self._client = SagaClient(self.data_dir)
        except BaseException:
            self.stop()  # started, but unreachable: leave nothing behind
            raise
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

    def stop(self, drain: bool = False, timeout: float = 5.0) -> None:
        """Stop the supervisor process (see :meth:`Supervisor.stop`) and wait
        for it to exit.  Idempotent."""
        proc = self._proc
        if self.state in ("new", "stopped") or proc is None:
            self.state = "stopped"
            return
        self.state = "stopping"
        for c in [self._client, *self._subs,
                  self._aclient._client if self._aclient is not None else None]:
            if c is not None:
                c.close()
        try:
            assert proc.stdin is not None
            proc.stdin.write(f"stop {int(bool(drain))} {float(timeout)}\n".encode())
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
        self.state = "stopped"
        atexit.unregister(self.stop)

    def __enter__(self) -> SupervisorProcess:
        return self.start() if self.state == "new" else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the API, through the control socket ------------------------------------------------

    def _gone(self, exc: BaseException) -> BaseException:
        """A call failed: if the supervisor process is dead, say so by name."""
        proc = self._proc
        if proc is None or self.state != "running":
            return exc
        try:
            code = proc.wait(0.5)
        except subprocess.TimeoutExpired:
            return exc
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return SupervisorGoneError(f"the supervisor process (pid {proc.pid}) died ({how}); "
                                   f"sagas in flight are recovered at its next start")

    def _api(self) -> SagaClient:
        if self._client is None or self.state != "running":
            raise NotRunningError(f"the supervisor is {self.state}")
        return self._client

    def _do(self, fn: Callable[[SagaClient], Any]) -> Any:
        try:
            return fn(self._api())
        except (NotRunningError, OSError) as exc:
            raise self._gone(exc) from exc

    def spawn(self, saga: Saga, key: str | None = None) -> int:
        return int(self._do(lambda c: c.spawn(saga, key)))

    def spawn_many(self, sagas: list[Saga]) -> list[int]:
        return list(self._do(lambda c: c.spawn_many(sagas)))

    def wait(self, saga_id: int, timeout: float | None = None) -> Outcome:
        out: Outcome = self._do(lambda c: c.wait(saga_id, timeout))
        return out

    def cancel(self, saga_id: int, reason: str = "cancelled") -> bool:
        return bool(self._do(lambda c: c.cancel(saga_id, reason)))

    def publish(self, event: Event) -> None:
        self._do(lambda c: c.publish(event))

    def metrics(self) -> str:
        """The Prometheus exposition (needs ``metrics_port``)."""
        return str(self._do(lambda c: c.metrics()))

    def _async(self) -> AsyncSagaClient:
        self._api()
        if self._aclient is None:
            self._aclient = AsyncSagaClient(self.data_dir)
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
        return dict(self.health()["stats"])

    def in_flight(self) -> int:
        return int(self.health()["supervisor"]["sagas_in_flight"])

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Bus events from now on (a connection of their own); ends when the
        supervisor stops or no event came for `timeout` seconds."""
        self._api()
        c = SagaClient(self.data_dir)
        self._subs.append(c)
        return c.events(timeout)

    def subscribe(self, callback: Callable[[Event], Any]) -> threading.Thread:
        """Call `callback(event)` for every bus event from now on, on a thread
        of the launcher (one that raises is logged; the stream goes on)."""
        if not callable(callback):
            raise TypeError("subscribe() takes a callable")
        stream = self.events()  # subscribed when this returns

        def run() -> None:
            for ev in stream:
                try:
                    callback(ev)
                except Exception:
                    log.exception("subscriber callback raised on %s", ev.kind)

        t = threading.Thread(target=run, name="saga-subscriber", daemon=True)
        t.start()
        return t
