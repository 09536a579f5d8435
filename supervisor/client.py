"""SagaClient: spawn, cancel, wait and follow the bus from another process.

A client finds a running supervisor from its data dir alone: the shared
segment's name is derived from the data dir, and ``<data_dir>/run/control``
holds the path of the supervisor's control socket (a Unix socket, mode 0600:
messages are pickles, so only the supervisor's own user may connect).

Ids come from the shared segment (lock-free, no round trip); the saga class
is shipped once per class and connection, its state once per saga.  The
supervisor pushes the outcome of every saga this client spawned as soon as it
is committed, so ``wait()`` on one of them is no round trip (a launcher whose
other threads keep the GIL busy pays each round trip in switch intervals).
"""

from __future__ import annotations

import itertools
from collections import deque
import os
import pickle
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import supervisor._validate as _validate
from supervisor._codec import dump_class, encode_saga
from supervisor._future import Future
from supervisor.errors import (ConnectionLostError, NotRunningError, SagaNotLoggedError,
                               UnknownSagaError, SegmentClosedError, SpawnError,
                               SupervisorError)
from supervisor.frames import MAX_FRAME, FrameReader, frame
from supervisor.paths import DataDir
from supervisor.saga import Event, Outcome, Saga
from supervisor.shm import SharedState


PROTOCOL = 2  # the control socket's protocol: 2 adds "hello" and "logged"

_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError, "TypeError": TypeError, "NotRunningError": NotRunningError,
    "SpawnError": SpawnError, "TimeoutError": TimeoutError,
    "UnknownSagaError": UnknownSagaError, "SagaNotLoggedError": SagaNotLoggedError,
}


def control_address(data_dir: str | os.PathLike[str]) -> str:
    path = DataDir.of(data_dir).control_file
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise NotRunningError(f"no supervisor is running on {data_dir} (no {path})") from None


class SagaClient:
    """A connection to the supervisor running on `data_dir`.  Thread-safe."""

    def __init__(self, data_dir: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.data_dir = Path(data_dir)
        address = control_address(data_dir)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        deadline, pause = time.monotonic() + timeout, 0.001
        while True:
            try:
                self._sock.connect(address)
                break
            except BlockingIOError as exc:  # its backlog is full: it is busy, not gone
                if time.monotonic() + pause > deadline:
                    self._sock.close()
                    raise NotRunningError(f"the supervisor of {data_dir} did not take the "
                                          f"connection within {timeout}s: {exc}") from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
            except OSError as exc:
                self._sock.close()
                raise NotRunningError(f"cannot reach the supervisor of {data_dir} at "
                                      f"{address}: {exc}") from exc
        self._sock.settimeout(None)
        self._shared = SharedState.attach(DataDir.of(data_dir).segment)
        self._send_lock = threading.Lock()
        self._reqs = itertools.count(1)
        self._pending: dict[int, Future] = {}
        self._classes: dict[type, int] = {}
        self._accepted: set[int] = set()  # class ids the supervisor loaded
        self._sealed = False  # seal(): nothing more is sent
        self._events: queue.SimpleQueue[Event | None] | None = None
        # outcomes of the sagas this client spawned, pushed by the supervisor:
        # a future while undecided, then (state, reason) until a wait() takes
        # it (however many end meanwhile: no round trip, no cliff; a waiter
        # that never comes is the caller's choice, a few dozen bytes each)
        self._outcomes: dict[int, Any] = {}
        # spawn requests sent, in order, until the supervisor says they are in
        # the log (("logged", n)); durable spawns wait for theirs
        self._spawns_sent = 0
        self._logged = 0
        self._unlogged: deque[tuple[int, list[int]]] = deque()
        self._durable: dict[int, Future] = {}
        self._lost: ConnectionLostError | None = None
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="saga-client-reader",
                                        daemon=True)
        self._reader.start()
        # say who we are at once: a connection silent since it connected is
        # closed after client_quiet_timeout (an idle client that spoke is not)
        try:
            self._send(("hello", 0, PROTOCOL))
        except BaseException:
            self.close()
            raise

    # -- requests -------------------------------------------------------------

    def _send(self, msg: tuple[Any, ...], seal: bool = False,
              spawned: list[int] | None = None) -> int:
        """Send one request; for a spawn (`spawned`: its ids), its number
        among this client's spawn requests."""
        body = pickle.dumps(msg, protocol=5)
        if len(body) > MAX_FRAME:
            raise SpawnError(f"the {msg[0]} request is {len(body):,} bytes, over the control "
                             f"socket's limit of {MAX_FRAME:,} bytes (a saga's state or "
                             "snapshot, or an event's data, is too large)")
        data = frame(body)
        with self._send_lock:
            if self._closed:
                raise NotRunningError("the client is closed")
            if self._sealed:
                raise NotRunningError("the supervisor is stopping")
            if self._lost is not None:
                raise self._lost
            broke: OSError | None = None
            try:
                self._sock.sendall(data)
            except OSError as exc:
                broke = exc
            if broke is None and seal:
                self._sealed = True
            if broke is None and spawned is not None:
                self._spawns_sent += 1
                self._unlogged.append((self._spawns_sent, spawned))
                return self._spawns_sent
        if broke is not None:  # the reader sees the end too: what it read counts
            self._reader.join(2.0)
            raise self._lost or ConnectionLostError(
                f"the supervisor connection broke: {broke}", self.unconfirmed) from broke
        return 0

    def _call(self, op: str, *args: Any, timeout: float | None = 30.0,
              spawned: list[int] | None = None) -> Any:
        req = next(self._reqs)
        p = Future()
        self._pending[req] = p
        try:
            self._send((op, req, *args), spawned=spawned)
            return p.result(timeout)
        except TimeoutError:
            raise TimeoutError(f"no answer to {op} within {timeout}s") from None
        finally:
            self._pending.pop(req, None)

    def spawn(self, saga: Saga, key: str | None = None, durable: bool = False) -> int:
        """Spawn `saga` on the supervisor; returns its id.  With an idempotency
        `key`, the id of the saga that holds it (see
        :meth:`supervisor.Supervisor.spawn`).  By default it returns before
        the supervisor logged the saga; with `durable`, only once it is in the
        log (one round trip and a commit more)."""
        (sid, *args), = self._spawn_requests([saga], key)
        self._outcomes[sid] = Future()
        try:
            if key is None and args[0] in self._accepted:
                # pipelined: nothing to wait for, the id is ours already; a
                # refusal (a stopping supervisor, a malformed request) is its
                # outcome: wait() raises it
                seq = self._send(("spawn", 0, sid, *args, True), spawned=[sid])
                if durable:
                    self._await_logged(seq)
                return int(sid)
            got = int(self._call("spawn", sid, *args, True, spawned=[sid]))
            if durable:
                self._await_logged(self._spawns_sent)
        except BaseException as exc:
            self._outcomes.pop(sid, None)
            self._abandon([sid], exc)
        self._accepted.add(args[0])  # its class loaded there: the next spawns need no answer
        if got != sid:
            self._outcomes.pop(sid, None)
        return self._spawned(sid, got)

    def spawn_many(self, sagas: list[Saga], durable: bool = False) -> list[int]:
        """Spawn many sagas in one request: their ids, in order (all or none
        start); with `durable`, once they are in the log."""
        items = self._spawn_requests(sagas, None)
        ids = [it[0] for it in items]
        for sid in ids:
            self._outcomes[sid] = Future()
        try:
            got = list(self._call("spawn_many", [it[:-1] for it in items], True, spawned=ids))
            if durable:
                self._await_logged(self._spawns_sent)
            return got
        except BaseException as exc:
            for sid in ids:
                self._outcomes.pop(sid, None)
            self._abandon(ids, exc)

    def _await_logged(self, seq: int, timeout: float = 60.0) -> None:
        """Block until spawn request `seq` of this client is in the log."""
        with self._send_lock:
            if self._logged >= seq:
                return
            if self._lost is not None:
                raise self._lost
            f = self._durable.setdefault(seq, Future())
        try:
            f.result(timeout)
        except TimeoutError:
            raise TimeoutError(f"the supervisor did not log the spawn within {timeout}s: "
                               "wait() tells whether it was logged") from None

    def _on_logged(self, n: int) -> None:
        """("logged", n): this client's first `n` spawn requests are in the log."""
        done: list[Future] = []
        with self._send_lock:
            self._logged = max(self._logged, n)
            while self._unlogged and self._unlogged[0][0] <= n:
                self._unlogged.popleft()
            for seq in [q for q in self._durable if q <= n]:
                done.append(self._durable.pop(seq))
        for f in done:
            f.set(True)

    @property
    def unconfirmed(self) -> list[int]:
        """Ids this client's spawns returned that the supervisor has not (yet)
        confirmed as logged."""
        with self._send_lock:
            return [sid for _, ids in self._unlogged for sid in ids]

    # -- what spawn and spawn_many share with AsyncSagaClient ------------------------

    def _spawn_requests(self, sagas: list[Saga], key: str | None) -> list[tuple[Any, ...]]:
        """Encode, ship each class once, take an id each: the requests' fields."""
        if key is not None:
            key = _validate.key(key)
        encoded = [encode_saga(s) for s in sagas]
        for sh in encoded:
            if sh.cls not in self._classes:
                blob = dump_class(sh.cls)
                with self._send_lock:
                    ccid = self._classes.setdefault(sh.cls, len(self._classes) + 1)
                self._send(("cls", 0, ccid, blob))
        if self._sealed or self._closed:
            raise NotRunningError("the supervisor is stopping" if self._sealed else
                                  "the client is closed")
        try:
            ids = [self._shared.acquire() for _ in encoded]
        except SegmentClosedError:  # closed by another thread meanwhile
            raise NotRunningError("the client is closed") from None
        return [(sid, self._classes[sh.cls], sh.state, sh.name, sh.timeout, sh.snapshot_json,
                 sorted(sh.listens), sh.has_comp, key) for sid, sh in zip(ids, encoded)]

    def _abandon(self, ids: list[int], exc: BaseException) -> NoReturn:
        """A spawn request failed: give the slots back.  Refused: the sagas
        never started.  No answer (timeout, connection lost): the supervisor
        may have accepted them; then each still ends, failed, within its
        timeout (a claim it cannot take is waited for at most a grace period)."""
        for sid in ids:
            try:
                self._shared.claim(sid)
            except SegmentClosedError:  # the client closed meanwhile: nothing to give back
                break
        if isinstance(exc, TimeoutError):
            raise TimeoutError(f"no answer to the spawn of saga(s) {ids[:5]}: they may have "
                               "started; wait() tells") from None
        raise exc

    def _spawned(self, sid: int, got: int) -> int:
        if got != sid:  # the key's saga exists: ours never started
            self._shared.claim(sid)
        return got

    def cancel(self, saga_id: int, reason: str = "cancelled", timeout: float | None = 30.0
               ) -> bool:
        sid = _validate.saga_id(saga_id)
        return bool(self._call("cancel", sid, _validate.text(reason, "reason"),
                               timeout=timeout))

    def wait(self, saga_id: int, timeout: float | None = None) -> Outcome:
        sid = _validate.saga_id(saga_id)
        timeout = _validate.timeout(timeout)
        mine = self._outcomes.get(sid)
        if type(mine) is tuple:  # spawned here, pushed already
            state, reason = mine
            self._outcomes.pop(sid, None)
        elif mine is not None:  # spawned here: its outcome is pushed, no round trip
            try:
                state, reason = mine.result(timeout)
            except TimeoutError:
                raise TimeoutError(f"saga {sid} did not end within {timeout}s") from None
            self._outcomes.pop(sid, None)
        else:
            state, reason = self._call("wait", sid, timeout=timeout)
        return Outcome(sid, state, reason)

    def publish(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"publish() takes an Event, got {type(event).__name__}")
        self._call("publish", event.kind, event.data)

    def metrics(self) -> str:
        """The supervisor's Prometheus exposition (needs prometheus-client
        where the supervisor runs)."""
        return bytes(self._call("metrics")).decode()

    def health(self) -> dict[str, Any]:
        """The supervisor's health report (as :meth:`Supervisor.health`)."""
        return dict(self._call("health"))

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Subscribe now; iterate over bus events from now on.  The iterator
        ends when the supervisor stops, the client closes, or no event came
        for `timeout` seconds."""
        return self._iter_events(self.subscribe_queue(), timeout)

    def subscribe_queue(self) -> queue.SimpleQueue[Event | None]:
        """Subscribe now: bus events from now on go to the queue returned
        (None once the connection is gone)."""
        if self._events is None:
            self._events = queue.SimpleQueue()
            self._call("subscribe")
        return self._events

    @staticmethod
    def _iter_events(q: queue.SimpleQueue[Event | None], timeout: float | None
                     ) -> Iterator[Event]:
        while True:
            try:
                item = q.get(timeout=timeout)
            except queue.Empty:
                return
            if item is None:
                q.put(None)
                return
            yield item

    # -- plumbing ---------------------------------------------------------------

    def _read(self) -> None:
        reader = FrameReader()
        closing = "the supervisor closed the connection"
        try:
            while True:
                data = self._sock.recv(1 << 16)
                if not data:
                    break
                for body in reader.feed(data):
                    msg = pickle.loads(body)
                    if msg[0] == "outcomes":
                        for sid, state, reason in msg[1]:
                            self._pushed(sid, state, reason)
                        continue
                    if msg[0] == "refused":  # a pipelined spawn: it never started
                        self._refused(msg[1], *msg[2])
                        continue
                    if msg[0] == "logged":
                        self._on_logged(msg[1])
                        continue
                    if msg[0] == "closing":  # why the supervisor closes us (its limit)
                        closing = str(msg[1])
                        continue
                    if msg[0] == "event":
                        if self._events is not None:
                            self._events.put(Event(*msg[1:]))
                        continue
                    p = self._pending.get(msg[1])
                    if p is None:
                        continue
                    if msg[0] == "ok":
                        p.set(msg[2])
                    else:
                        kind, message = msg[2]
                        p.set(error=_ERRORS.get(kind, SupervisorError)(message))
        except OSError:
            pass
        finally:
            gone = self._lost = ConnectionLostError(closing, self.unconfirmed)
            with self._send_lock:
                durable, self._durable = list(self._durable.values()), {}
            undecided = [f for f in list(self._outcomes.values()) if type(f) is not tuple]
            for p in list(self._pending.values()) + undecided + durable:
                p.set(error=gone)
            if self._events is not None:
                self._events.put(None)

    def _refused(self, sid: int, kind: str, message: str) -> None:
        f = self._outcomes.get(sid) if isinstance(sid, int) else None
        if f is not None and type(f) is not tuple:
            try:
                self._shared.claim(sid)  # give the slot back
            except SegmentClosedError:
                pass
            f.set(error=_ERRORS.get(kind, SupervisorError)(
                f"saga {sid} was not started: {message}"))

    def _pushed(self, sid: int, state: str, reason: str | None) -> None:
        f = self._outcomes.get(sid)
        if f is None or type(f) is tuple:
            return
        self._outcomes[sid] = (state, reason)  # (the future's lock is freed)
        f.set((state, reason))

    def seal(self, timeout: float = 10.0) -> None:
        """Send nothing more, and return once the supervisor has taken every
        request sent before (a spawn that was not answered, too): what a
        stopping launcher does first, so that every id it returned is
        logged with an outcome."""
        req = next(self._reqs)
        p = Future()
        self._pending[req] = p
        self._send(("sync", req), seal=True)  # any other send went before, or raises
        try:
            p.result(timeout)
        finally:
            self._pending.pop(req, None)

    def close(self) -> None:
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(5)
        self._shared.close()

    def __enter__(self) -> SagaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SagaClient", "control_address", "SpawnError"]
