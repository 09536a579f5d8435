"""The control socket: where SagaClient connections are served, by the
supervisor's loop thread (a mixin of :class:`supervisor.core.Supervisor`).

A Unix socket, mode 0600, path in ``<data_dir>/run/control``.  Messages are
pickled tuples in length-prefixed frames: only the supervisor's own user can
connect.  Requests: ``cls``, ``spawn``, ``cancel``, ``wait``, ``publish``,
``subscribe``; replies ``("ok", req, value)`` or ``("err", req, (kind, msg))``,
and ``("event", ...)`` for subscribers.  Replies to ``wait`` are sent after
the saga's terminal row is committed, like every other output.
"""

from __future__ import annotations

import os
import pickle
import selectors
import socket
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dill

from supervisor import frames
from supervisor.errors import SupervisorError
from supervisor.saga import Event
from supervisor.shm import segment_name

if TYPE_CHECKING:
    import threading

    from supervisor.log import SagaLog
    from supervisor.shm import SharedState

import logging

log = logging.getLogger(__name__)
RUNNING = 0  # the loop's phase of a saga that is not compensating (see core._Live)


class _Conn:
    """A SagaClient connection on the control socket."""

    __slots__ = ("sock", "reader", "outbuf", "classes", "subscribed", "want_write", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = frames.FrameReader()
        self.outbuf = bytearray()
        self.classes: dict[int, int | str] = {}
        self.subscribed = False
        self.want_write = False
        self.closed = False

    def send(self, msg: tuple[Any, ...]) -> None:
        if not self.closed:
            self.outbuf += frames.frame(pickle.dumps(msg, protocol=5))


class ControlServer:
    """The control-socket half of the supervisor (runs on its loop thread).
    A mixin: the state it shares with the loop is declared here, and set up
    by :class:`supervisor.core.Supervisor`."""

    data_dir: Path
    _state: str
    _sel: selectors.BaseSelector | None
    _listener: socket.socket | None
    _control_path: Path | None
    _conns: list[_Conn]
    _remote_waiters: dict[int, list[tuple[_Conn, int]]]
    _shared: SharedState | None
    _log: SagaLog | None
    _live: dict[int, Any]
    _lock: threading.Lock
    _pending: set[int]
    _outcomes: dict[int, tuple[int, str, str | None]]
    _emit: list[tuple[str, Any, int | None, int | None]]

    # provided by the supervisor
    def _register_class(self, cls: type, blob: bytes | None) -> int:
        raise NotImplementedError

    def _do_spawn(self, sid: int, item: tuple[Any, ...], trigger_event: Event | None) -> None:
        raise NotImplementedError

    def _fail(self, L: Any, reason: str, claimed: bool = False,
              consumed: bytes | str | None = None) -> bool:
        raise NotImplementedError

    def _drain_log(self) -> None:
        raise NotImplementedError

    def _open_control(self) -> None:
        """Listen on a Unix socket (mode 0600) for SagaClient connections and
        write its path to <data_dir>/run/control."""
        assert self._sel is not None
        run = self.data_dir / "run"
        run.mkdir(parents=True, exist_ok=True)
        os.chmod(run, 0o700)
        path = run / "ctl.sock"
        if len(os.fsencode(path)) > 100:  # AF_UNIX paths are short (108 bytes)
            path = Path(tempfile.gettempdir()) / f"{segment_name(self.data_dir)}.sock"
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                path.unlink()  # left by a supervisor that died; we own the data dir now
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise SupervisorError(f"cannot listen on control socket {path}: {exc}") from exc
        sock.setblocking(False)
        self._listener = sock
        self._control_path = path
        (run / "control").write_text(str(path))
        self._sel.register(sock, selectors.EVENT_READ, ("accept", sock))

    # -- control socket (SagaClient) ----------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        c = _Conn(sock)
        self._conns.append(c)
        self._sel.register(sock, selectors.EVENT_READ, ("conn", c))

    def _close_conn(self, c: _Conn) -> None:
        if c.closed:
            return
        c.closed = True
        if self._sel is not None:
            try:
                self._sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
        c.sock.close()
        self._conns = [x for x in self._conns if x is not c]

    def _read_conn(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_conn(c)
            return
        try:
            for body in c.reader.feed(data):
                self._client_request(c, pickle.loads(body))
        except Exception as exc:  # a broken or hostile client: drop it, never crash
            log.warning("dropping a control connection: %s: %s", type(exc).__name__, exc)
            self._close_conn(c)

    def _flush_conn(self, c: _Conn) -> None:
        assert self._sel is not None
        try:
            while c.outbuf:
                n = c.sock.send(c.outbuf)
                del c.outbuf[:n]
        except (BlockingIOError, InterruptedError):
            if not c.want_write:
                c.want_write = True
                self._sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                 ("conn", c))
            if len(c.outbuf) > 256 << 20:
                log.warning("dropping a control client that does not read its replies")
                self._close_conn(c)
            return
        except OSError:
            self._close_conn(c)
            return
        if c.want_write:
            c.want_write = False
            self._sel.modify(c.sock, selectors.EVENT_READ, ("conn", c))

    def _client_request(self, c: _Conn, msg: tuple[Any, ...]) -> None:
        op, req = msg[0], msg[1]

        def err(kind: str, message: str) -> None:
            c.send(("err", req, (kind, message)))

        if op == "cls":
            ccid, blob = msg[2], msg[3]
            try:
                c.classes[ccid] = self._register_class(dill.loads(blob), blob)
            except Exception as exc:
                c.classes[ccid] = f"saga class could not be loaded: {type(exc).__name__}: {exc}"
            return
        if self._state != "running" and op in ("spawn", "cancel", "publish"):
            err("NotRunningError", f"the supervisor is {self._state}")
            return
        assert self._shared is not None
        if op == "spawn":
            sid, ccid, state, name, timeout, snapshot_json, listens, has_comp = msg[2:10]
            cid = c.classes.get(ccid)
            if not isinstance(cid, int):
                err("SpawnError", cid or f"unknown class id {ccid!r}")
                return
            if not isinstance(sid, int) or sid in self._live or \
                    self._shared.state(sid) != "live":
                err("ValueError", f"saga id {sid!r} is not a fresh registered id")
                return
            with self._lock:
                self._pending.add(sid)
            self._do_spawn(sid, (cid, state, str(name), float(timeout), str(snapshot_json),
                                 frozenset(listens), bool(has_comp)), None)
            c.send(("ok", req, sid))
        elif op == "cancel":
            sid, reason = msg[2], msg[3]
            L = self._live.get(sid)
            if L is None and not (0 < sid < self._shared.peek_next_id()):
                err("ValueError", f"unknown saga id {sid}: never allocated")
                return
            won = L is not None and L.phase == RUNNING and self._fail(L, f"cancelled: {reason}")
            c.send(("ok", req, bool(won)))
        elif op == "wait":
            sid = msg[2]
            with self._lock:
                o = self._outcomes.get(sid)
                pending = sid in self._pending
            if o is not None:
                c.send(("ok", req, (o[1], o[2])))
            elif pending or sid in self._live:
                self._remote_waiters.setdefault(sid, []).append((c, req))
            else:
                assert self._log is not None
                self._drain_log()
                row = self._log.saga(sid)
                if row is None:
                    err("ValueError", f"unknown saga id {sid}")
                elif row["state"] in ("running", "compensating"):
                    err("NotRunningError", f"saga {sid} is {row['state']} in the log but not "
                        "in flight")
                else:
                    c.send(("ok", req, (row["state"], row["failure_reason"])))
        elif op == "publish":
            self._emit.append((str(msg[2]), msg[3], None, None))
            c.send(("ok", req, None))
        elif op == "subscribe":
            c.subscribed = True
            c.send(("ok", req, None))
        else:
            err("ValueError", f"unknown request {op!r}")

