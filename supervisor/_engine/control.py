"""The control socket: where :class:`supervisor.SagaClient` connections are
served.  Loop thread only; composed into the loop (it shares nothing by
inheritance).

A Unix stream socket in a private directory (mode 0700: ``<data_dir>/run``,
or a directory of the segment's name under the system's temporary directory
when that path would be too long for AF_UNIX); ``<data_dir>/run/control``
holds its path.  A peer must run as the supervisor's user (checked with
``SO_PEERCRED``): messages are pickles.

Requests are pickled tuples in length-prefixed frames: ``cls``, ``spawn``,
``spawn_many``, ``cancel``, ``wait``, ``publish``, ``subscribe``, ``metrics``,
``sync``; replies ``("ok", req, value)`` or ``("err", req, (kind, msg))``,
``("event", ...)`` for subscribers, ``("outcomes", ...)`` for the sagas a
client spawned, and ``("logged", n)``: after a commit, the number of the
client's spawn requests (in the order sent) that are now in the log.
``sync`` is answered once everything the client sent before is in the log.  Every field is checked as strictly as ``SagaClient`` checks
it.  Each request is its own failure boundary: one that cannot be handled
gets an error reply or drops its connection, never the loop.  Replies to
``wait`` leave after the saga's terminal row is committed, like every output.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import selectors
import socket
import struct
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import dill

import supervisor.frames as frames
from supervisor._codec import ClassRegistry, SagaSpec
from supervisor._engine.control_msgs import BadRequest, Refused, field, parse_spawn, saga_id
from supervisor._engine.control_socket import (PEERCRED, QUIET_LIMIT, Conn,
                                               default_max_clients, listen)
from supervisor._engine.outcomes import Outcomes
from supervisor._engine.records import Lifecycle, Turn
from supervisor._engine.registrations import REGISTRATIONS, Registration
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable
from supervisor.errors import NotRunningError, SupervisorError, UnknownSagaError
from supervisor.log import LogError
from supervisor.log_store import outcome_of
from supervisor._ratelimit import RateLimitedLog
from supervisor.paths import DataDir
from supervisor.shm import SharedState

log = logging.getLogger(__name__)

_MAX_OUTBUF = 256 << 20
_warn = RateLimitedLog(log, 10.0)


class ControlServer:
    def __init__(self, paths: DataDir, sel: selectors.BaseSelector, life: Lifecycle,
                 shared: SharedState, table: SagaTable, outcomes: Outcomes,
                 registry: ClassRegistry, sagas: SagaOps, turn: Turn,
                 read_outcome: Callable[[int], tuple[str, str | None] | None],
                 metrics: Callable[[], bytes] | None = None,
                 spawn_keyed: Callable[[int, SagaSpec, str], int] | None = None,
                 health: Callable[[], dict[str, Any]] | None = None,
                 max_clients: int | None = None, quiet_limit: float = QUIET_LIMIT,
                 register: Callable[[Registration], None] | None = None,
                 clock_moved: Callable[[float], None] | None = None) -> None:
        self.paths = paths
        self.max_clients = max_clients or default_max_clients()
        self.quiet_limit = quiet_limit
        self.sel = sel
        self.life = life
        self.shared = shared
        self.table = table
        self.outcomes = outcomes
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
        self.listener: socket.socket | None = None
        self.path: Path | None = None
        self.conns: list[Conn] = []
        self.remote_waiters: dict[int, list[tuple[Conn, int]]] = {}
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
        try:
            _pid, uid, _gid = PEERCRED.unpack(sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
        except (OSError, AttributeError, struct.error):
            uid = os.getuid()  # no SO_PEERCRED here: the directory's mode guards it
        if uid != os.getuid() and uid != 0:
            self.refused += 1
            _warn.warning("uid", "refused a control connection from uid %d", uid)
            sock.close()
            return True
        if len(self.conns) >= self.max_clients:  # politely: a reason, then close
            self.over_limit += 1
            _warn.warning("limit", "refused a control connection: %d clients connected "
                          "(max_clients=%d)", len(self.conns), self.max_clients)
            try:
                sock.setblocking(False)
                sock.send(frames.frame(pickle.dumps(("closing", (
                    f"the supervisor serves at most {self.max_clients} clients at once "
                    "(max_clients) and has that many"),), protocol=5)))
            except OSError:
                pass
            sock.close()
            return True
        sock.setblocking(False)
        c = Conn(sock)
        self.conns.append(c)
        self.sel.register(sock, selectors.EVENT_READ, lambda mask: self._ready(c, mask))
        return True

    def check(self, now: float) -> None:
        """Each health tick: resume accepting after an EMFILE pause; close
        connections silent since they connected, or stuck in a half-written
        frame, for ``client_quiet_timeout`` seconds (each holds a descriptor)."""
        if self.paused_until is not None and now >= self.paused_until \
                and self.listener is not None:
            self.paused_until = None
            self.sel.register(self.listener, selectors.EVENT_READ, lambda mask: self._accept())
        for c in list(self.conns):
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
        try:
            data = c.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
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
        for body in bodies:
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
                self._refuse(c, msg[1], msg, r)
            except BadRequest as exc:
                self._refuse(c, msg[1], msg, Refused("ValueError",
                                                     f"bad {msg[0]} request: {exc}"))
            except BaseException as exc:
                _warn.warning("failed", "control request %r failed: %s: %s", msg[0],
                              type(exc).__name__, exc)
                self._refuse(c, msg[1], msg, Refused("SupervisorError",
                                                     f"{type(exc).__name__}: {exc}"))

    def flush(self, c: Conn) -> None:
        try:
            while c.outbuf:
                n = c.sock.send(c.outbuf)
                del c.outbuf[:n]
        except (BlockingIOError, InterruptedError):
            if not c.want_write:
                c.want_write = True
                self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                lambda mask: self._ready(c, mask))
            if len(c.outbuf) > _MAX_OUTBUF:
                _warn.warning("slow", "dropping a control client that does not read its "
                              "replies")
                self.close_conn(c)
            return
        except OSError:
            self.close_conn(c)
            return
        if c.want_write:
            c.want_write = False
            self.sel.modify(c.sock, selectors.EVENT_READ, lambda mask: self._ready(c, mask))

    def flush_all(self) -> None:
        for c in self.conns:
            if c.outbuf and not c.want_write:
                self.flush(c)

    def resolved(self, ended: list[tuple[int, str, str | None]]) -> None:
        """Committed outcomes: answer the clients waiting on them."""
        if self.remote_waiters:
            pushed: dict[Conn, list[tuple[int, str, str | None]]] = {}
            for sid, state, reason in ended:
                for c, req in self.remote_waiters.pop(sid, ()):
                    if req:
                        c.send(("ok", req, (state, reason)))
                    else:  # a client watching the sagas it spawned: one message a turn
                        pushed.setdefault(c, []).append((sid, state, reason))
            for c, items in pushed.items():
                c.send(("outcomes", items))

    def close(self) -> None:
        for c in list(self.conns):
            self.close_conn(c)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            for leftover in (self.path, self.paths.control_file):
                try:
                    if leftover is not None:
                        leftover.unlink()
                except OSError:
                    pass
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
        for c in self.unacked:
            self.turn.after.append(functools.partial(c.send, ("logged", c.spawns)))
        self.unacked.clear()

    def _request(self, c: Conn, msg: tuple[Any, ...]) -> None:
        op, req = msg[0], msg[1]
        if op == "spawn" or op == "spawn_many":
            c.spawns += 1
            self.unacked.add(c)
        if op == "cls":
            ccid, blob = field(msg, 2, int), field(msg, 3, bytes)
            try:
                c.classes[ccid] = self.registry.register(dill.loads(blob), blob)
            except (KeyboardInterrupt, LogError):
                raise
            except BaseException as exc:
                c.classes[ccid] = (f"saga class could not be loaded: "
                                   f"{type(exc).__name__}: {exc}")
            return
        if not self.life.running and op in ("spawn", "spawn_many", "cancel", "publish"):
            self._refuse(c, req, msg, Refused("NotRunningError",
                                              f"the supervisor is {self.life.state}"))
            return
        if op == "spawn":
            self._spawn(c, req, msg)
        elif op == "spawn_many":
            self._spawn_many(c, req, msg)
        elif op == "cancel":
            sid, reason = saga_id(msg, 2), field(msg, 3, str)
            try:
                decided = self.sagas.cancel(sid, reason)
            except UnknownSagaError as exc:
                raise Refused("UnknownSagaError", str(exc)) from None
            c.send(("ok", req, decided))
        elif op == "wait":
            self._wait(c, req, saga_id(msg, 2))
        elif op == "publish":
            kind = field(msg, 2, str)
            self.turn.events.append((kind, msg[3] if len(msg) > 3 else None, None, None))
            c.send(("ok", req, None))
        elif op == "hello":  # a client says its protocol version: nothing to answer
            pass
        elif op == "clock" and self.clock_moved is not None:  # a launcher's test clock
            self.clock_moved(float(field(msg, 2, (int, float))))
        elif op == "subscribe":
            c.subscribed = True
            c.send(("ok", req, None))
        elif op == "sync":  # answered once every earlier request is in the log
            self.turn.after.append(functools.partial(c.send, ("ok", req, None)))
        elif op == "register" and self.register is not None:
            try:  # a kind, handler or trigger from a launcher (dill, as classes are)
                reg = dill.loads(field(msg, 2, bytes))
                if not isinstance(reg, REGISTRATIONS):
                    raise TypeError(f"cannot register a {type(reg).__name__}")
                self.register(reg)
            except (TypeError, ValueError, NotRunningError) as exc:
                raise Refused(type(exc).__name__, str(exc)) from None
            c.send(("ok", req, None))
        elif op == "health" and self.health is not None:
            c.send(("ok", req, self.health()))
        elif op == "metrics":
            if self.metrics is None:
                raise BadRequest("this supervisor has no metrics")
            c.send(("ok", req, self.metrics()))
        else:
            raise BadRequest(f"unknown request {op!r}")

    def _parse_spawn(self, c: Conn, msg: tuple[Any, ...]) -> tuple[int, SagaSpec, str | None]:
        """A spawn request's fields, checked: (saga id, spec, key)."""
        sid, spec, key = parse_spawn(msg, c.classes)
        if sid in self.table.live or self.shared.state(sid) != "live":
            raise Refused("ValueError", f"saga id {sid!r} is not a fresh registered id")
        return sid, spec, key

    def _start(self, sid: int, spec: SagaSpec, key: str | None) -> int:
        self.outcomes.expect(sid)
        if key is not None and self.spawn_keyed is not None:
            got = self.spawn_keyed(sid, spec, key)
            if got != sid:
                self.outcomes.forget(sid)  # the key's saga exists: this one never starts
            return got
        self.sagas.start(sid, spec)
        return sid

    def _refuse(self, c: Conn, req: int, msg: tuple[Any, ...], r: Refused) -> None:
        if req == 0 and msg[0] == "spawn":  # a pipelined spawn: say which saga
            c.send(("refused", msg[2] if len(msg) > 2 else None, (r.kind, r.message)))
        else:
            c.send(("err", req, (r.kind, r.message)))

    def _spawn(self, c: Conn, req: int, msg: tuple[Any, ...]) -> None:
        """Request 0: pipelined, answered only if refused (the client took
        the id from shared memory and returned it already)."""
        try:
            sid, spec, key = self._parse_spawn(c, msg)
        except Refused as r:
            self._refuse(c, req, msg, r)
            return
        got = self._start(sid, spec, key)
        if len(msg) > 11 and msg[11] is True and got == sid:
            self.remote_waiters.setdefault(sid, []).append((c, 0))  # push its outcome
        if req:
            c.send(("ok", req, got))

    def _spawn_many(self, c: Conn, req: int, msg: tuple[Any, ...]) -> None:
        """Every item checked first, then all started: all or none."""
        items = field(msg, 2, list)
        try:
            parsed = [self._parse_spawn(c, ("spawn", req) + tuple(field((it,), 0, tuple)))
                      for it in items]
        except Refused as r:
            c.send(("err", req, (r.kind, r.message)))
            return
        ids = [self._start(sid, spec, key) for sid, spec, key in parsed]
        if len(msg) > 3 and msg[3] is True:  # push the outcomes of these sagas
            for sid in ids:
                self.remote_waiters.setdefault(sid, []).append((c, 0))
        c.send(("ok", req, ids))

    def _wait(self, c: Conn, req: int, sid: int) -> None:
        o = self.outcomes.lookup(sid)
        if o is not None:
            c.send(("ok", req, o))
        elif self.outcomes.is_undecided(sid) or sid in self.table.live:
            self.remote_waiters.setdefault(sid, []).append((c, req))
        else:
            try:
                out = outcome_of(sid, self.read_outcome(sid))
            except SupervisorError as exc:  # (UnknownSagaError, SagaNotLoggedError, ...)
                c.send(("err", req, (type(exc).__name__, str(exc))))
            else:
                c.send(("ok", req, (out.state, out.reason)))

