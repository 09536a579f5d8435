"""The control socket's transport: the listening socket in a private
directory, a connection and its buffers, and the limits on connections.
Loop thread only.  What the requests mean is :mod:`.control`'s."""

from __future__ import annotations

import logging
import os
import pickle
import resource
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any

import supervisor.frames as frames
from supervisor.common.ratelimit import RateLimitedLog
from supervisor.errors import SupervisorError
from supervisor.paths import DataDir

# a connection that sent no whole request this long after it connected, or
# left a frame half-written this long, is closed
QUIET_LIMIT = 10.0


def default_max_clients() -> int:
    """Control connections served at once when ``max_clients`` is not set:
    a quarter of the open-files limit (each takes one descriptor; the rest
    stays for the log, pipes, workers and psutil's reads), from 16 to 4096."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(16, min(4096, soft // 4))
PEERCRED = struct.Struct("3i")  # pid, uid, gid
_warn = RateLimitedLog(logging.getLogger("supervisor._engine.control"), 10.0)


def refusal(sock: socket.socket, connected: int, max_clients: int) -> str | None:
    """Why a connection just accepted is refused, having closed it: "uid"
    (a peer of another user: messages are pickles), or "limit" (the
    ``max_clients`` connected; told so first, politely); None: served."""
    try:
        _pid, uid, _gid = PEERCRED.unpack(sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
    except (OSError, AttributeError, struct.error):
        uid = os.getuid()  # no SO_PEERCRED here: the directory's mode guards it
    if uid != os.getuid() and uid != 0:
        _warn.warning("uid", "refused a control connection from uid %d", uid)
        sock.close()
        return "uid"
    if connected < max_clients:
        return None
    _warn.warning("limit", "refused a control connection: %d clients connected "
                  "(max_clients=%d)", connected, max_clients)
    try:
        sock.setblocking(False)
        sock.send(frames.frame(pickle.dumps(("closing", (
            f"the supervisor serves at most {max_clients} clients at once "
            "(max_clients) and has that many"),), protocol=5)))
    except OSError:
        pass
    sock.close()
    return "limit"
_RECV_TURNS = 16


class Conn:
    """A SagaClient connection."""

    __slots__ = ("sock", "reader", "outbuf", "classes", "subscribed", "want_write", "closed",
                 "spawns", "born", "spoke", "partial_since", "unheard", "deferred", "held",
                 "parts")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = frames.FrameReader()
        self.outbuf = bytearray()
        self.classes: dict[int, int | str] = {}
        self.subscribed = False
        self.want_write = False
        self.closed = False
        self.spawns = 0  # spawn requests taken, acknowledged as logged once committed
        self.born = time.monotonic()
        self.spoke = False  # a whole request came
        self.partial_since: float | None = None  # a frame begun and not finished
        # the peer takes nothing more (a send failed: it died, or shut its
        # reading down): nothing more is sent, and what it sent before is
        # still read, up to its end (a dead launcher's pipelined spawns)
        self.unheard = False
        # a large batch of its spawns is being started a slice a turn: what it
        # sent after it waits (`held`: read already; the rest in the socket)
        self.deferred = False
        self.held: list[bytes] = []
        # batches it sends in parts, by request: the items so far (None: refused)
        self.parts: dict[int, list[Any] | None] = {}

    def send_rest(self, timeout: float) -> None:
        """At close: what is still owed to the peer, blocking up to `timeout` s."""
        if self.outbuf and not self.unheard and timeout > 0:
            try:
                self.sock.settimeout(timeout)
                self.sock.sendall(self.outbuf)
            except OSError:  # (a timeout too): it was not reading
                pass

    def recv(self) -> bytes | None:
        """What the peer sent (b"" at its end or an error; None: nothing yet).
        Up to 16 reads of ``frames.READ_SIZE``, not one of 1 MiB."""
        parts: list[bytes] = []
        try:
            for _ in range(_RECV_TURNS):
                got = self.sock.recv(frames.READ_SIZE)
                if not got:
                    break  # the end: what came before it is read first
                parts.append(got)
                if len(got) < frames.READ_SIZE:
                    break
        except (BlockingIOError, InterruptedError):
            if not parts:
                return None
        except OSError:
            pass  # read again at the next turn, which then ends the connection
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def send(self, msg: tuple[Any, ...]) -> None:
        if not self.closed and not self.unheard:
            self.outbuf += frames.frame(pickle.dumps(msg, protocol=5))


def _private_dir(path: os.PathLike[str] | str) -> None:
    """Make `path` a directory only we can enter (refuse one someone else owns)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise SupervisorError(f"{path} is not a directory owned by this user: refusing to "
                              "put the control socket there")
    os.chmod(path, 0o700)


def listen(paths: DataDir) -> tuple[socket.socket, Path]:
    """A non-blocking listening socket at ``<run dir>/ctl.sock`` (mode 0600
    in a 0700 directory), its path written to the data dir's control file."""
    run = paths.run
    try:
        _private_dir(run)
        where = paths.socket_dir()
        if where != run:
            _private_dir(where)
    except OSError as exc:
        raise SupervisorError(f"cannot set up the control socket's directory under "
                              f"{run}: {exc}") from exc
    path = where / "ctl.sock"
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()  # left by a supervisor that died; we own the data dir now
    except OSError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # inside a 0700 directory: no window for others
        sock.listen(64)
        paths.control_file.write_text(str(path))
    except OSError as exc:
        sock.close()
        raise SupervisorError(f"cannot listen on control socket {path}: {exc}") from exc
    sock.setblocking(False)
    return sock, path
