"""The connection core both clients share: :class:`ClientCore`.

One connection to a supervisor's control socket and everything both
:class:`~supervisor.clients.client.SagaClient` and
:class:`~supervisor.clients.async_client.AsyncSagaClient` do on it, once:
connecting (the socket's path from the data dir), framing and sending the
typed requests of :mod:`supervisor.wire.requests`, reading the supervisor's
messages on one reader thread (answers to the futures that wait for them,
pushed outcomes, "logged" counts, events), encoding sagas and shipping each
class once, taking ids from shared memory and giving a slot back when its
saga never started.

A pending answer is anything with ``set(value, error)``: a
:class:`~supervisor.common.future.Future` for the sync client, an
:class:`~supervisor.facade.aio.AsyncResult` for the asyncio one; the same for
the event sink (anything with ``put``).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, NoReturn

import pickle

import supervisor.common.checks as _checks
import supervisor.wire.requests as rq
from supervisor.common.future import Future
from supervisor.errors import (ConnectionLostError, NotRunningError, SegmentClosedError,
                               SpawnError)
from supervisor.frames import MAX_FRAME, FrameReader, frame
from supervisor.paths import DataDir
from supervisor.saga import Event, Saga
from supervisor.shmem.binding import send_now
from supervisor.shmem.state import SharedState
from supervisor.wire.codec import dump_class, encode_saga, new_record
from supervisor.wire.ship import error_of

# sagas a part of spawn_many's request: sent as soon as it is encoded, while
# the supervisor checks the one before (the loop's slice, too)
BATCH_PART = 2048

PENDING: Any = object()  # a saga spawned here whose outcome is not pushed yet


def control_address(data_dir: str | os.PathLike[str]) -> str:
    path = DataDir.of(data_dir).control_file
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise NotRunningError(f"no supervisor is running on {data_dir} (no {path})") from None


def _connect(data_dir: str | os.PathLike[str], timeout: float) -> socket.socket:
    address = control_address(data_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline, pause = time.monotonic() + timeout, 0.001
    while True:
        try:
            sock.connect(address)
            break
        except BlockingIOError as exc:  # its backlog is full: it is busy, not gone
            if time.monotonic() + pause > deadline:
                sock.close()
                raise NotRunningError(f"the supervisor of {data_dir} did not take the "
                                      f"connection within {timeout}s: {exc}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        except OSError as exc:
            sock.close()
            raise NotRunningError(f"cannot reach the supervisor of {data_dir} at "
                                  f"{address}: {exc}") from exc
    sock.settimeout(None)
    return sock


class ClientCore:
    """One connection to the supervisor running on `data_dir`.  Thread-safe."""

    def __init__(self, data_dir: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.data_dir = Path(data_dir)
        self._sock = _connect(data_dir, timeout)
        self.shared = SharedState.attach(DataDir.of(data_dir).segment_in_use())
        self._send_lock = threading.Lock()
        self._reqs = itertools.count(1)
        self.pending: dict[int, Any] = {}  # request number -> what its answer is set on
        self._classes: dict[type, int] = {}
        self.accepted: set[int] = set()  # class ids the supervisor loaded
        self.sealed = False  # seal(): nothing more is sent
        self.closed = False
        self.events: Any = None  # where pushed events go, once subscribed (put(); None ends)
        # outcomes of the sagas this client spawned, pushed by the supervisor:
        # PENDING while undecided (a Future once a wait() came first), then
        # (state, reason) until a wait() takes it (however many end meanwhile:
        # no round trip, no cliff; a waiter that never comes is the caller's
        # choice, a few dozen bytes each).  _out_lock orders a waiter's
        # future against the reader's outcome.
        self.outcomes: dict[int, Any] = {}
        self._out_lock = threading.Lock()
        # spawn requests sent, in order, until the supervisor says they are in
        # the log (("logged", n)); durable spawns wait for theirs
        self.spawns_sent = 0
        self._logged = 0
        self._unlogged: deque[tuple[int, tuple[int, ...]]] = deque()  # (of atoms: the
        # collector stops tracking them, however many spawns wait to be logged)
        self._durable: dict[int, Future] = {}
        self._lost: ConnectionLostError | None = None
        self._reader = threading.Thread(target=self._read, name="saga-client-reader",
                                        daemon=True)
        self._reader.start()
        # say who we are at once: a connection silent since it connected is
        # closed after client_quiet_timeout (an idle client that spoke is not)
        try:
            self.send(rq.Hello(0, rq.PROTOCOL))
        except BaseException:
            self.close()
            raise

    # -- sending ----------------------------------------------------------------------

    def next_req(self) -> int:
        return next(self._reqs)

    def send(self, rec: rq.Request, seal: bool = False,
             spawned: tuple[int, ...] | None = None, body: bytes | None = None
             ) -> int:
        """Send one request (`body`: encoded already); for a spawn
        (`spawned`: its ids), its number among this connection's spawn
        requests."""
        if body is None:
            body = rq.encode(rec)
        if len(body) > MAX_FRAME:
            raise SpawnError(f"the {rq.OP_OF[type(rec)]} request is {len(body):,} bytes, "
                             f"over the control socket's limit of {MAX_FRAME:,} bytes (a "
                             "saga's state or snapshot, or an event's data, is too large)")
        data = frame(body)
        with self._send_lock:
            if self.closed:
                raise NotRunningError("the client is closed")
            if self.sealed:
                raise NotRunningError("the supervisor is stopping")
            if self._lost is not None:
                raise self._lost
            broke: OSError | None = None
            try:
                # first without blocking and with the GIL kept: a request
                # that fits the socket's buffer leaves without waiting a
                # switch interval behind a busy thread of this process
                sent = send_now(self._sock.fileno(), data)
                if sent < len(data):
                    self._sock.sendall(memoryview(data)[sent:])
            except OSError as exc:
                broke = exc
            if broke is None and seal:
                self.sealed = True
            if broke is None and spawned is not None:
                self.spawns_sent += 1
                self._unlogged.append((self.spawns_sent, spawned))
                return self.spawns_sent
        if broke is not None:  # the reader sees the end too: what it read counts
            self._reader.join(2.0)
            raise self._lost or ConnectionLostError(
                f"the supervisor connection broke: {broke}", self.unconfirmed) from broke
        return 0

    def call(self, make: Any, result: Any, spawned: tuple[int, ...] | None = None) -> int:
        """Send ``make(req)`` with a fresh request number whose answer is set
        on `result`; returns the number (the caller waits, then :meth:`done`)."""
        req = next(self._reqs)
        self.pending[req] = result
        try:
            self.send(make(req), spawned=spawned)
        except BaseException:
            self.pending.pop(req, None)
            raise
        return req

    def done(self, req: int) -> None:
        self.pending.pop(req, None)

    def call_batch(self, sagas: list[Saga], result: Any) -> tuple[int, list[int]]:
        """``spawn_many``'s request, in parts of :data:`BATCH_PART` sagas, each
        sent as soon as it is encoded (the supervisor checks one while this
        encodes the next; it starts none before the last): the request's
        number, whose answer is set on `result`, and the sagas' ids.  A saga
        that cannot be encoded aborts the batch (none starts), and is raised."""
        req = next(self._reqs)
        self.pending[req] = result
        ids: list[int] = []
        sent = False
        try:
            for k in range(0, len(sagas), BATCH_PART) if sagas else [0]:
                items = self.prepare(sagas[k:k + BATCH_PART], None)
                part_ids = [it.saga_id for it in items]
                ids += part_ids
                self.expect(part_ids)
                rec = rq.SpawnBatch(req, items, True, k + BATCH_PART < len(sagas))
                for part, body in rq.batch_frames(rec, MAX_FRAME):  # (over a frame: split)
                    self.send(part, spawned=tuple(it.saga_id for it in part.items), body=body)
                    sent = True
        except BaseException as exc:
            self.pending.pop(req, None)
            if sent:
                try:  # what was sent is dropped there, unstarted
                    # (a spawn request all the same: counted on both sides, see "logged")
                    self.send(rq.SpawnBatch(req, [], True, False, True), spawned=())
                except BaseException:
                    pass  # (the connection is gone: so are the parts it held)
            self.abandon(ids, exc)
        return req, ids

    # -- spawning --------------------------------------------------------------------

    def prepare(self, sagas: list[Saga], key: str | None) -> list[rq.SpawnItem]:
        """Encode, ship each class once, take an id each: the spawn items."""
        if key is not None:
            key = _checks.key(key)
        encoded = [encode_saga(s) for s in sagas]
        for cls, _ in encoded:
            if cls not in self._classes:
                blob = dump_class(cls)
                with self._send_lock:
                    ccid = self._classes.setdefault(cls, len(self._classes) + 1)
                self.send(rq.ShipClass(0, ccid, blob))
        if self.sealed or self.closed:
            raise NotRunningError("the supervisor is stopping" if self.sealed else
                                  "the client is closed")
        try:
            ids = [self.shared.acquire() for _ in encoded]
        except SegmentClosedError:  # closed by another thread meanwhile
            raise NotRunningError("the client is closed") from None
        classes = self._classes
        return [new_record(rq.SpawnItem, (sid, classes[cls], sp.state, sp.name, sp.timeout,
                                   sp.snapshot_json, sorted(sp.listens) if sp.listens else (),
                                   sp.has_comp, key))
                for sid, (cls, sp) in zip(ids, encoded)]

    def expect(self, ids: list[int]) -> None:
        """Their outcomes will be pushed here: wait() needs no round trip."""
        outcomes = self.outcomes
        for sid in ids:
            outcomes[sid] = PENDING

    def outcome(self, sid: int) -> Any:
        """A saga spawned here: its (state, reason) if pushed already, else a
        :class:`Future` of it; None for a saga not spawned here (ask)."""
        mine = self.outcomes.get(sid)
        if mine is not PENDING:
            return mine
        with self._out_lock:
            mine = self.outcomes.get(sid)
            if mine is PENDING:  # the first waiter: a future, set by the reader
                mine = self.outcomes[sid] = Future()
                if self._lost is not None:
                    mine.set(error=self._lost)
        return mine

    def abandon(self, ids: list[int], exc: BaseException) -> NoReturn:
        """A spawn request failed: give the slots back.  Refused: the sagas
        never started.  No answer (timeout, connection lost): the supervisor
        may have accepted them; then each still ends, failed, within its
        timeout (a claim it cannot take is waited for at most a grace period)."""
        for sid in ids:
            self.outcomes.pop(sid, None)
        for sid in ids:
            try:
                self.shared.claim(sid)
            except SegmentClosedError:  # the client closed meanwhile: nothing to give back
                break
        if isinstance(exc, TimeoutError):
            raise TimeoutError(f"no answer to the spawn of saga(s) {ids[:5]}: they may have "
                               "started; wait() tells") from None
        raise exc

    def spawned(self, sid: int, got: int) -> int:
        """A keyed spawn's answer: `got` is the key's saga; if not ours, ours
        never started (its slot given back, nothing to push)."""
        if got != sid:
            self.outcomes.pop(sid, None)
            self.shared.claim(sid)
        return got

    def await_logged(self, seq: int, timeout: float = 60.0) -> None:
        """Block until spawn request `seq` of this connection is in the log."""
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

    @property
    def unconfirmed(self) -> list[int]:
        """Ids this connection's spawns returned that the supervisor has not
        (yet) confirmed as logged."""
        with self._send_lock:
            return [sid for _, ids in self._unlogged for sid in ids]

    # -- reading ----------------------------------------------------------------------

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
                    what = msg[0]
                    if what == "outcomes":
                        self._pushed(msg[1])
                    elif what == "refused":  # a pipelined spawn: it never started
                        self._refused(msg[1], *msg[2])
                    elif what == "logged":
                        self._on_logged(msg[1])
                    elif what == "closing":  # why the supervisor closes us (its limit)
                        closing = str(msg[1])
                    elif what == "event":
                        if self.events is not None:
                            self.events.put(Event(*msg[1:]))
                    else:
                        p = self.pending.get(msg[1])
                        if p is None:
                            continue
                        if what == "ok":
                            p.set(msg[2])
                        else:
                            p.set(error=error_of(*msg[2]))
        except OSError:
            pass
        finally:
            gone = self._lost = ConnectionLostError(closing, self.unconfirmed)
            with self._send_lock:
                durable, self._durable = list(self._durable.values()), {}
            with self._out_lock:  # (a later waiter sees _lost: see outcome())
                undecided = [f for f in self.outcomes.values() if type(f) is Future]
            for p in list(self.pending.values()) + undecided + durable:
                p.set(error=gone)
            if self.events is not None:
                self.events.put(None)

    def _on_logged(self, n: int) -> None:
        """("logged", n): this connection's first `n` spawn requests are logged."""
        done: list[Future] = []
        with self._send_lock:
            self._logged = max(self._logged, n)
            while self._unlogged and self._unlogged[0][0] <= n:
                self._unlogged.popleft()
            for seq in [q for q in self._durable if q <= n]:
                done.append(self._durable.pop(seq))
        for f in done:
            f.set(True)

    def _refused(self, sid: int, kind: str, message: str) -> None:
        with self._out_lock:
            f = self.outcomes.get(sid) if isinstance(sid, int) else None
            if f is None or type(f) is tuple:
                return
            if f is PENDING:
                f = self.outcomes[sid] = Future()
        try:
            self.shared.claim(sid)  # give the slot back
        except SegmentClosedError:
            pass
        f.set(error=error_of(kind, f"saga {sid} was not started: {message}"))

    def _pushed(self, items: list[tuple[int, str, str | None]]) -> None:
        """Outcomes the supervisor pushed (one message a turn)."""
        waiting = []
        outcomes = self.outcomes
        with self._out_lock:
            for sid, state, reason in items:
                f = outcomes.get(sid)
                if f is None or type(f) is tuple:
                    continue
                outcomes[sid] = (state, reason)
                if f is not PENDING:
                    waiting.append((f, (state, reason)))
        for f, out in waiting:
            f.set(out)

    # -- the end ----------------------------------------------------------------------

    def seal(self, timeout: float = 10.0) -> None:
        """Send nothing more, and return once the supervisor has taken every
        request sent before (a spawn that was not answered, too)."""
        p = Future()
        req = next(self._reqs)
        self.pending[req] = p
        try:
            self.send(rq.Sync(req), seal=True)  # any other send went before, or raises
            p.result(timeout)
        finally:
            self.pending.pop(req, None)

    def close(self) -> None:
        with self._send_lock:
            if self.closed:
                return
            self.closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(5)
        self.shared.close()
