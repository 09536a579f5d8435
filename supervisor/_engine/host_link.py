"""The host process and its pipe.  Loop thread only (but the stderr tail's
reader thread).

Starts the host (an argv, as a subprocess) or adopts a given pair of fds,
reads whole frames from it and writes framed commands to it, without
blocking.  It decides nothing about sagas: :meth:`HostLink.read` and
:meth:`HostLink.flush` return frame bodies and a *death verdict* (why the
pipe is gone, or None), and the loop routes both.  :meth:`HostLink.lost`
stops a dead host and, within restart intensity, starts a new one at once
(the first death in a period) or after a backoff that doubles with each
death (``restart_backoff``, capped at 2 s); commands issued meanwhile are
held and go to the new host.  Past the intensity the host stays down
(:attr:`HostLink.down`, reported in health) and host commands fail at once.

A host started from an argv writes its stderr through a pipe: a thread
copies it to the supervisor's own stderr as it comes and keeps its last
lines, so that a host that dies at start is reported by ``start()`` with
what it said (:class:`HostStartError`).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import supervisor.frames as frames
from supervisor._engine.pipes import drain
from supervisor._engine.records import HostProc, Lifecycle, Settings, Stats
from supervisor._engine.restarts import RestartWindow
from supervisor._engine.timers import HOST_RESTART, Timers
from supervisor.errors import HostStartError, SupervisorError

log = logging.getLogger(__name__)

_READ = frames.READ_SIZE
# a host that dies within this long of its start is reported by start(), and
# after it too while it has not yet been seen waiting for its commands (up to
# HOST_SETTLE_MAX): see HostLink.check_started
HOST_SETTLE: Final = 0.25
HOST_SETTLE_MAX: Final = 5.0
_SETTLE_POLL = 0.01
_TAIL_LINES = 20

# what became of a host that died (HostLink.lost)
RESTARTED: Final = "restarted"
LATER: Final = "later"  # restarted after a backoff; its commands are held
GONE: Final = "gone"


def _asleep(pid: int) -> bool:
    """Whether the process is asleep (waiting, not starting up or running)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_SLEEPING)
    except psutil.Error:  # gone (its exit status is read next) or unreadable
        return False


class StderrTail:
    """Copies a host's stderr to ours as it comes, keeping its last lines."""

    def __init__(self, pipe: Any) -> None:
        self.lines: deque[bytes] = deque(maxlen=_TAIL_LINES)
        self._partial = b""
        self._pipe = pipe
        self._thread = threading.Thread(target=self._copy, name="saga-host-stderr",
                                        daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        fd = self._pipe.fileno()
        out = getattr(sys.stderr, "buffer", None)
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                break
            if not data:
                break
            try:
                if out is not None:
                    out.write(data)
                    out.flush()
            except (OSError, ValueError):
                out = None  # our stderr is gone: keep the tail all the same
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()[-4096:]
            self.lines.extend(line[-1024:] for line in lines)
        if self._partial:
            self.lines.append(self._partial)
            self._partial = b""
        try:
            self._pipe.close()
        except OSError:
            pass

    def text(self, wait: float = 0.0) -> str:
        """The last lines, after waiting up to `wait` s for the pipe's end."""
        if wait:
            self._thread.join(wait)
        return b"\n".join(self.lines).decode("utf-8", "replace")


def stop_host_process(h: HostProc, grace: float) -> None:
    """Close the pipes of a host we started (it exits on stdin EOF), give it
    `grace` seconds, then SIGTERM, then SIGKILL.  A host on given fds is not
    ours to stop."""
    if h.proc is None:
        return
    for f in (h.proc.stdin, h.proc.stdout):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            h.proc.send_signal(sig)
        try:
            h.proc.wait(grace if sig is None else 2.0)
            return
        except subprocess.TimeoutExpired:
            pass


class HostLink:
    def __init__(self, settings: Settings, sel: selectors.BaseSelector, stats: Stats,
                 life: Lifecycle, on_readable: Callable[[HostProc], Any],
                 on_writable: Callable[[HostProc], Any], timers: Timers,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.sel = sel
        self.stats = stats
        self.life = life
        self.on_readable = on_readable
        self.on_writable = on_writable
        self.clock = clock
        self.timers = timers  # the loop's one heap: a HOST_RESTART entry per backoff
        self.host: HostProc | None = None
        self.window = RestartWindow(settings.max_restarts, settings.restart_period,
                                    backoff=settings.restart_backoff)
        self.restart_at: float | None = None  # a restart waiting out its backoff
        self.held: list[tuple[int, int, str, bool]] = []  # host commands meanwhile
        self.down: str | None = None  # why the host stays down (past intensity)

    @property
    def configured(self) -> bool:
        return self.settings.host_argv is not None or self.settings.host_fds is not None

    def start(self) -> HostProc:
        s = self.settings
        if s.host_fds is not None:
            wfd, rfd = s.host_fds
            h = HostProc(None, wfd, rfd)
        else:
            assert s.host_argv is not None
            try:
                # its own process group: a terminal's Ctrl-C goes to the
                # launcher, which stops the host itself (stdin EOF)
                proc = subprocess.Popen(s.host_argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        bufsize=0, close_fds=True, start_new_session=True)
            except OSError as exc:
                raise SupervisorError(f"cannot start the host {s.host_argv!r}: {exc}"
                                      ) from exc
            assert proc.stdin is not None and proc.stdout is not None
            h = HostProc(proc, proc.stdin.fileno(), proc.stdout.fileno())
            h.stderr = StderrTail(proc.stderr)
        os.set_blocking(h.wfd, False)
        os.set_blocking(h.rfd, False)
        self.sel.register(h.rfd, selectors.EVENT_READ, lambda mask: self.on_readable(h))
        self.host = h
        return h

    def check_started(self, timeout: float) -> None:
        """At start: a host that exits before it has settled raises
        HostStartError with its exit status and the last lines of its
        stderr.  Settled: it answered something, or it has lived HOST_SETTLE
        seconds and is then seen asleep twice in a row (as a host blocked
        on reading its commands is), or HOST_SETTLE_MAX (at most `timeout`)
        passed.  On a busy machine a host may not have run its first lines
        within HOST_SETTLE: one still starting up is not taken for started."""
        h = self.host
        if h is None or h.proc is None:
            return
        settle_at = h.born + HOST_SETTLE
        give_up = h.born + min(HOST_SETTLE_MAX, timeout)
        asleep = 0
        while True:
            status = h.proc.poll()
            if status is not None:
                break
            now = time.monotonic()
            if h.frames_in or now >= give_up:
                return
            if now >= settle_at:
                asleep = asleep + 1 if _asleep(h.proc.pid) else 0
                if asleep >= 2:
                    return
            try:
                status = h.proc.wait(max(settle_at - now, _SETTLE_POLL))
            except subprocess.TimeoutExpired:
                continue
            break
        tail = h.stderr.text(wait=1.0) if h.stderr is not None else ""
        raise HostStartError(self.settings.host_argv, status, tail)

    def read(self, h: HostProc) -> tuple[list[bytes], str | None]:
        """Every whole frame readable now, and the death verdict."""
        bodies: list[bytes] = []
        eof = False
        try:
            while True:
                data = os.read(h.rfd, _READ)
                if not data:
                    eof = True
                    break
                try:
                    bodies += h.reader.feed(data)
                except frames.FrameError as exc:
                    h.bad_frames += 1
                    self.stats["bad_frames"] += 1
                    return bodies, f"host pipe broken: {exc}"
                if len(data) < _READ:
                    break
        except BlockingIOError:
            pass
        except OSError as exc:
            return bodies, f"host pipe read failed: {exc}"
        if not eof:
            self._note_partial(h, progressed=bool(bodies))
            return bodies, None
        status = h.proc.poll() if h.proc is not None else None  # EOF
        if h.proc is not None and status is None:
            try:
                status = h.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                status = None
        return bodies, f"host exited (status {status})"

    @staticmethod
    def _note_partial(h: HostProc, progressed: bool) -> None:
        """Remember since when the stream has held an unfinished frame without
        completing any (reads that end mid-frame under load are normal)."""
        if not h.reader.pending:
            h.partial_since = None
        elif progressed or h.partial_since is None:
            h.partial_since = time.monotonic()

    def check_stall(self, now: float) -> tuple[HostProc, str] | None:
        """A frame left unfinished for longer than ``host_stall_timeout`` (a
        stray length prefix, a host wedged mid-write): the stream cannot be
        trusted any more.  Returns the host and a death verdict."""
        h = self.host
        if h is None or not h.alive or h.partial_since is None:
            return None
        waited = now - h.partial_since
        if waited < self.settings.host_stall_timeout:
            return None
        self.stats["host_stalls"] += 1
        h.bad_frames += 1
        self.stats["bad_frames"] += 1
        return h, (f"host pipe stalled: {h.reader.pending} bytes of an unfinished frame for "
                   f"{waited:.1f}s (a stray length prefix, or a host stuck mid-write)")

    def flush(self, h: HostProc) -> str | None:
        """Write what the host's buffer holds, without blocking (a full pipe
        waits for writability in the selector).  Returns a death verdict."""
        err = drain(self.sel, h, lambda mask: self.on_writable(h))
        return None if err is None else f"host pipe send failed: {err}"

    def lost(self, h: HostProc, why: str) -> str:
        """The host is gone: stop it, and start a new one if it was started
        from an argv and restarts are within intensity: at once
        (:data:`RESTARTED`) or after a backoff (:data:`LATER`, see
        :meth:`restart_due`); else :data:`GONE`."""
        if not h.alive:
            return GONE
        h.alive = False
        h.death = why
        for fd in (h.rfd, h.wfd):
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        stop_host_process(h, grace=1.0)
        s = self.settings
        if not (s.restart_host and s.host_argv is not None and self.life.running):
            if s.host_argv is not None and self.life.running:
                self.down = f"host down (restart_host=False): {why}"
            return GONE
        verdict = self.window.record(self.clock())
        if not verdict.allowed:
            self.down = (f"host down: restart intensity exceeded ({verdict.restarts} "
                         f"deaths within {s.restart_period}s, max_restarts="
                         f"{s.max_restarts}); the last: {why}{self._said(h)}")
            log.error("%s: not restarting; host commands fail until the supervisor is "
                      "restarted", self.down)
            return GONE
        if verdict.delay > 0:
            self.restart_at = self.clock() + verdict.delay
            self.timers.at(self.restart_at, HOST_RESTART)
            return LATER
        return RESTARTED if self._restart(h) else GONE

    @staticmethod
    def _said(h: HostProc) -> str:
        tail = h.stderr.text(wait=0.2).splitlines()[-3:] if h.stderr is not None else []
        return f"; its stderr ended: {' | '.join(tail)}" if tail else ""

    def _restart(self, old: HostProc) -> bool:
        try:
            new = self.start()
        except SupervisorError as exc:
            self.down = f"host down: cannot restart it: {exc}"
            log.error("%s", self.down)
            self.host = old
            return False
        new.frames_in, new.frames_out = old.frames_in, old.frames_out
        new.bad_frames, new.unknown_answers = old.bad_frames, old.unknown_answers
        self.stats["host_restarts"] += 1
        return True

    def restart_due(self, now: float) -> bool:
        return self.restart_at is not None and now >= self.restart_at

    def restart_now(self) -> tuple[HostProc | None, list[tuple[int, int, str, bool]]]:
        """A backed-off restart is due: the new host (None if it could not
        start) and the commands held for it meanwhile."""
        self.restart_at = None
        held, self.held = self.held, []
        old = self.host
        assert old is not None
        if not self.life.running or not self._restart(old):
            return None, held
        return self.host, held

    def stop(self) -> None:
        if self.host is not None:
            stop_host_process(self.host, grace=5.0)
            if self.host.stderr is not None:
                self.host.stderr.text(wait=1.0)  # its last words reach our stderr
        self.host = None
        self.restart_at = None
        self.held = []
