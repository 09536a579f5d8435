"""The control socket: where :class:`supervisor.SagaClient` connections are
served.  Loop thread only; composed into the loop (it shares nothing by
inheritance).

A Unix stream socket in a private directory (mode 0700: ``<data_dir>/run``,
or a directory of the segment's name under the system's temporary directory
when that path would be too long for AF_UNIX); ``<data_dir>/run/control``
holds its path.  A peer must run as the supervisor's user (checked with
``SO_PEERCRED``): messages are pickles.

Requests and replies are pickled tuples in length-prefixed frames
(:mod:`supervisor.wire.requests` lists them), every field checked as
strictly as ``SagaClient`` checks it.  Each request is its own failure
boundary: one that cannot be handled gets an error reply or drops its
connection, never the loop.  Replies to ``wait`` and ``sync`` leave after
what they answer for is committed, like every output.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pickle
import selectors
import socket
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import dill

import supervisor.frames as frames
from supervisor.wire.codec import ClassRegistry, SagaSpec
import supervisor.wire.requests as rq
from supervisor._engine.control_msgs import BadRequest, Refused
from supervisor._engine.control_spawns import ClientSpawns
from supervisor._engine.inbox import SpawnMany
from supervisor._engine.control_socket import (QUIET_LIMIT, Conn, default_max_clients,
                                               listen, refusal)
from supervisor._engine.exits import Exits
from supervisor._engine.waiters import RemoteWaiters
from supervisor._engine.records import Lifecycle, Turn
from supervisor._engine.registrations import REGISTRATIONS, Registration
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable
from supervisor.errors import NotRunningError, SupervisorError, UnknownSagaError
from supervisor.saga import Event
from supervisor.store.sqlite import LogError
from supervisor.store.seam import outcome_of
from supervisor.common.ratelimit import RateLimitedLog
from supervisor.paths import DataDir
from supervisor.shmem.state import SharedState

log = logging.getLogger(__name__)

_MAX_OUTBUF = 256 << 20
_warn = RateLimitedLog(log, 10.0)


class ControlServer:
    def __init__(self, paths: DataDir, sel: selectors.BaseSelector, life: Lifecycle,
                 shared: SharedState, table: SagaTable, exits: Exits,
                 registry: ClassRegistry, sagas: SagaOps, turn: Turn,
                 read_outcome: Callable[[int], tuple[str, str | None] | None],
                 metrics: Callable[[], bytes] | None = None,
                 spawn_keyed: Callable[[int, SagaSpec, str], int] | None = None,
                 health: Callable[[], dict[str, Any]] | None = None,
                 max_clients: int | None = None, quiet_limit: float = QUIET_LIMIT,
                 register: Callable[[Registration], None] | None = None,
                 clock_moved: Callable[[float], None] | None = None,
                 post: Callable[[SpawnMany], None] | None = None, slice_size: int = 2048
                 ) -> None:
        self.paths = paths
        self.max_clients = max_clients or default_max_clients()
        self.quiet_limit = quiet_limit
        self.sel = sel
        self.life = life
        self.shared = shared
        self.table = table
        self.exits = exits
        self.registry = registry
        self.sagas = sagas
        self.turn = turn
        self.read_outcome = read_outcome
        self.metrics = metrics
        self.health = health
        self.spawn_keyed = spawn_keyed
        # applies a launcher's registration (engine="process": shipped after start)
        self.register = register
        # a mirrored test clock's set_offset (engine="process" with a Clock)
        self.clock_moved = clock_moved
        # a supervisor process's events held for its launcher's subscriptions
        # made before start(), handed over once each (see facade.early_subs)
        self.held: Callable[[int], list[Event]] | None = None
        self.listener: socket.socket | None = None
        self.path: Path | None = None
        self.conns: list[Conn] = []
        self.remote_waiters = RemoteWaiters()
        self.spawns = ClientSpawns(life, shared, table, exits, sagas, self.remote_waiters,
                                   spawn_keyed, post, slice_size)
        self.unacked: set[Conn] = set()  # took spawns this turn: say "logged" after the commit
        self.refused = 0  # peers of another user
        self.over_limit = 0  # refused: max_clients were connected
        self.timed_out = 0  # silent or half-written past QUIET_LIMIT
        self.accept_errors = 0  # accept() failed (EMFILE, ENFILE, ...)
        self.paused_until: float | None = None  # accepting again after an EMFILE

    def open(self) -> None:
        self.listener, self.path = listen(self.paths)
        self.sel.register(self.listener, selectors.EVENT_READ, lambda mask: self._accept())

    def subscribed(self) -> list[Conn]:
        return [c for c in self.conns if c.subscribed] if self.conns else []

    # -- connections -----------------------------------------------------------------

    def _accept(self) -> None:
        """Take what waits in the backlog (up to 64 a turn)."""
        for _ in range(64):
            if self.listener is None or self.paused_until is not None or \
                    not self._accept_one():
                return

    def _accept_one(self) -> bool:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # EMFILE/ENFILE: stop accepting for a moment, never spin
            self.accept_errors += 1
            _warn.warning("accept", "cannot accept control connections: %s; pausing for "
                          "%.1fs (%d connected)", exc, 0.5, len(self.conns))
            self.paused_until = time.monotonic() + 0.5
            try:
                self.sel.unregister(self.listener)
            except (KeyError, ValueError):
                pass
            return False
        why = refusal(sock, len(self.conns), self.max_clients)
        if why is not None:
            if why == "uid":
                self.refused += 1
            else:
                self.over_limit += 1
            return True
        sock.setblocking(False)
        c = Conn(sock)
        self.conns.append(c)
        self.sel.register(sock, selectors.EVENT_READ, lambda mask: self._ready(c, mask))
        return True

    def _listen(self, c: Conn) -> None:
        """What the selector watches `c` for: reading, unless it is deferred
        (what it sent next waits in the socket); writing, while its replies
        wait for room."""
        mask = (0 if c.deferred else selectors.EVENT_READ) | \
            (selectors.EVENT_WRITE if c.want_write else 0)
        try:
            if mask:
                self.sel.modify(c.sock, mask, lambda m: self._ready(c, m))
            else:
                self.sel.unregister(c.sock)
        except KeyError:  # not registered (it was deferred and had nothing to write)
            self.sel.register(c.sock, mask, lambda m: self._ready(c, m))

    def check(self, now: float) -> None:
        """Each health tick: resume accepting after an EMFILE pause; close
        connections silent since they connected, or stuck in a half-written
        frame, for ``client_quiet_timeout`` seconds (each holds a descriptor)."""
        if self.paused_until is not None and now >= self.paused_until \
                and self.listener is not None:
            self.paused_until = None
            self.sel.register(self.listener, selectors.EVENT_READ, lambda mask: self._accept())
        for c in list(self.conns):
            if c.deferred:  # its spawns are still being started: it waits for us
                continue
            limit = self.quiet_limit
            stuck = c.partial_since is not None and now - c.partial_since > limit
            if stuck or (not c.spoke and now - c.born > limit):
                self.timed_out += 1
                _warn.warning("quiet", "closing a control connection %s for %.0fs",
                              "stuck in a half-written request" if stuck else "silent",
                              limit)
                self.close_conn(c)

    def _ready(self, c: Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush(c)
        if mask & selectors.EVENT_READ and not c.closed:
            self._read(c)

    def close_conn(self, c: Conn) -> None:
        if c.closed:
            return
        c.closed = True
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        self.conns = [x for x in self.conns if x is not c]

    def _read(self, c: Conn) -> None:
        data = c.recv()
        if data is None:
            return
        if not data:
            self.close_conn(c)
            return
        try:
            bodies = c.reader.feed(data)
        except frames.FrameError as exc:
            _warn.warning("frame", "dropping a control connection: %s", exc)
            self.close_conn(c)
            return
        if bodies:
            c.spoke = True
        if not c.reader.pending:
            c.partial_since = None
        elif bodies or c.partial_since is None:
            c.partial_since = time.monotonic()
        self._handle(c, bodies)

    def _resume(self, c: Conn) -> None:
        """`c`'s large batch is started: take what it sent after it."""
        held, c.held = c.held, []
        if not c.closed:
            self._handle(c, held)
            if not c.deferred:
                self._listen(c)

    def _handle(self, c: Conn, bodies: list[bytes]) -> None:
        for i, body in enumerate(bodies):
            if c.deferred:  # a batch before this one is still being started
                c.held = bodies[i:]
                self._listen(c)
                return
            try:
                msg = pickle.loads(body)
                if not isinstance(msg, tuple) or len(msg) < 2 or not isinstance(msg[0], str) \
                        or not isinstance(msg[1], int):
                    raise BadRequest("a request is a tuple (op, request id, ...)")
            except (KeyboardInterrupt, LogError):
                raise
            except BaseException as exc:  # a broken or hostile client: drop it
                _warn.warning("unreadable", "dropping a control connection: unreadable "
                              "request: %s: %s", type(exc).__name__, exc)
                self.close_conn(c)
                return
            try:
                self._request(c, msg)
            except (KeyboardInterrupt, LogError):
                raise
            except Refused as r:
                self._refuse(c, msg, r)
            except BadRequest as exc:
                self._refuse(c, msg, Refused("ValueError", f"bad {msg[0]} request: {exc}"))
            except BaseException as exc:
                _warn.warning("failed", "control request %r failed: %s: %s", msg[0],
                              type(exc).__name__, exc)
                self._refuse(c, msg, Refused("SupervisorError",
                                             f"{type(exc).__name__}: {exc}"))

    def flush(self, c: Conn) -> None:
        try:
            while c.outbuf:
                n = c.sock.send(c.outbuf)
                del c.outbuf[:n]
        except (BlockingIOError, InterruptedError):
            if not c.want_write:
                c.want_write = True
                self._listen(c)
            if len(c.outbuf) > _MAX_OUTBUF:
                _warn.warning("slow", "dropping a control client that does not read its "
                              "replies")
                self.close_conn(c)
            return
        except OSError:
            # (EPIPE: not closed here, or the requests it sent before it died,
            # still unread, would be lost: the read side ends it at its EOF)
            c.unheard = True
            c.outbuf.clear()
        if c.want_write:
            c.want_write = False
            self._listen(c)

    def flush_all(self) -> None:
        for c in self.conns:
            if c.outbuf and not c.want_write:
                self.flush(c)

    def resolved(self, ended: list[tuple[int, str, str | None]]) -> None:
        """Committed outcomes: answer the clients waiting on them."""
        if self.remote_waiters:
            pushed: dict[Conn, list[tuple[int, str, str | None]]] = {}
            for sid, state, reason in ended:
                for c, req in self.remote_waiters.pop(sid):
                    if req:
                        c.send(("ok", req, (state, reason)))
                    else:  # a client watching the sagas it spawned: one message a turn
                        pushed.setdefault(c, []).append((sid, state, reason))
            for c, items in pushed.items():
                c.send(("outcomes", items))

    def close(self, grace: float = 1.0) -> None:
        """Close every connection; what is still owed to a client (the
        outcomes the stop logged) gets up to `grace` seconds in all to leave."""
        deadline = time.monotonic() + grace
        for c in list(self.conns):
            c.send_rest(deadline - time.monotonic())
            self.close_conn(c)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            for leftover in (self.path, self.paths.control_file):
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        leftover.unlink()
            if self.path is not None and self.path.parent != self.paths.run:
                try:
                    self.path.parent.rmdir()
                except OSError:
                    pass

    # -- requests ------------------------------------------------------------------------

    def end_turn(self) -> None:
        """Before the turn's commit: each client that sent spawns this turn
        is told, once they are committed, how many of its spawn requests
        are in the log (refused ones included), in the order it sent them."""
        # told once a large batch is started, and once a batch in parts is whole
        later = {c for c in self.unacked
                 if c.deferred or any(p is not None for p in c.parts.values())}
        for c in self.unacked:
            if c not in later:
                self.turn.after.append(functools.partial(c.send, ("logged", c.spawns)))
        self.unacked = later

    def _request(self, c: Conn, msg: tuple[Any, ...]) -> None:
        if msg[0] in rq.SPAWN_OPS:  # counted as sent, well-formed or not (see end_turn)
            c.spawns += 1
            self.unacked.add(c)
        rec = rq.decode(msg)
        if isinstance(rec, rq.Spawn):
            self.spawns.spawn(c, rec)
            return
        if isinstance(rec, rq.ShipClass):
            try:
                c.classes[rec.class_id] = self.registry.register(dill.loads(rec.blob), rec.blob)
            except (KeyboardInterrupt, LogError):
                raise
            except BaseException as exc:
                c.classes[rec.class_id] = (f"saga class could not be loaded: "
                                           f"{type(exc).__name__}: {exc}")
            return
        if not self.life.running and isinstance(rec, (rq.SpawnBatch, rq.Cancel, rq.Publish)):
            raise Refused("NotRunningError", f"the supervisor is {self.life.state}")
        req = rec.req
        if isinstance(rec, rq.SpawnBatch):
            self.spawns.spawn_many(c, rec, self._resume)
        elif isinstance(rec, rq.Cancel):
            try:
                decided = self.sagas.cancel(rec.saga_id, rec.reason)
            except UnknownSagaError as exc:
                raise Refused("UnknownSagaError", str(exc)) from None
            c.send(("ok", req, decided))
        elif isinstance(rec, rq.Wait):
            self._wait(c, req, rec.saga_id)
        elif isinstance(rec, rq.Publish):
            self.turn.events.append((rec.kind, rec.data, rec.saga_id, rec.step))
            c.send(("ok", req, None))
        elif isinstance(rec, rq.Hello):
            if rec.version != rq.PROTOCOL:
                raise Refused("SupervisorError", f"this supervisor speaks protocol "
                              f"{rq.PROTOCOL}, the client {rec.version}: use the same "
                              "saga-supervisor version on both sides")
        elif isinstance(rec, rq.ClockMoved):
            if self.clock_moved is not None:  # a launcher's test clock
                self.clock_moved(float(rec.offset))
        elif isinstance(rec, rq.Subscribe):
            held = self._held(rec.early) if rec.early is not None else ()
            c.subscribed = True
            c.send(("ok", req, None))
            for ev in held:  # (before any event published after them)
                c.send(("event", ev.kind, ev.data, ev.saga_id, ev.step, ev.version))
        elif isinstance(rec, rq.Sync):  # answered once every earlier request is in the log
            self.turn.after.append(functools.partial(c.send, ("ok", req, None)))
        elif isinstance(rec, rq.Register):
            if self.register is None:
                raise BadRequest("this supervisor takes no registrations")
            try:  # a kind, handler or trigger from a launcher (dill, as classes are)
                reg = dill.loads(rec.blob)
                if not isinstance(reg, REGISTRATIONS):
                    raise TypeError(f"cannot register a {type(reg).__name__}")
                self.register(reg)
            except (TypeError, ValueError, NotRunningError) as exc:
                raise Refused(type(exc).__name__, str(exc)) from None
            c.send(("ok", req, None))
        elif isinstance(rec, rq.Health):
            if self.health is None:
                raise BadRequest("this supervisor reports no health here")
            c.send(("ok", req, self.health()))
        elif isinstance(rec, rq.Metrics):
            if self.metrics is None:
                raise BadRequest("this supervisor has no metrics")
            c.send(("ok", req, self.metrics()))

    def _refuse(self, c: Conn, msg: tuple[Any, ...], r: Refused) -> None:
        req = msg[1]
        if msg[0] == "spawn_many":
            self.spawns.refused(c, msg)
        if req == 0 and msg[0] == "spawn":  # a pipelined spawn: say which saga (read
            item = msg[2] if len(msg) > 2 else None  # raw: it may be too broken to decode)
            sid = item[0] if isinstance(item, tuple) and item else None
            c.send(("refused", sid, (r.kind, r.message)))
        else:
            c.send(("err", req, (r.kind, r.message)))

    def _held(self, k: int) -> list[Event]:
        if self.held is None:
            raise Refused("SupervisorError", "this supervisor holds no subscriptions")
        try:
            return self.held(k)
        except LookupError as exc:
            raise Refused("SupervisorError", str(exc)) from None

    def _wait(self, c: Conn, req: int, sid: int) -> None:
        o = self.exits.lookup(sid)
        if o is not None:
            c.send(("ok", req, o))
        elif self.exits.is_undecided(sid) or sid in self.table.live:
            self.remote_waiters.add(sid, c, req)
        else:
            try:
                out = outcome_of(sid, self.read_outcome(sid))
            except SupervisorError as exc:  # (UnknownSagaError, SagaNotLoggedError, ...)
                c.send(("err", req, (type(exc).__name__, str(exc))))
            else:
                c.send(("ok", req, (out.state, out.reason)))

