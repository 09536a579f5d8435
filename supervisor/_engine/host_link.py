"""The host process and its pipe.  Loop thread only.

Starts the host (an argv, as a subprocess) or adopts a given pair of fds,
reads whole frames from it and writes framed commands to it, without
blocking.  It decides nothing about sagas: :meth:`HostLink.read` and
:meth:`HostLink.flush` return frame bodies and a *death verdict* (why the
pipe is gone, or None), and the loop routes both.  :meth:`HostLink.lost`
stops a dead host and, within restart intensity, starts a new one.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import supervisor.frames as frames
from supervisor._engine.pipes import drain
from supervisor._engine.records import HostProc, Lifecycle, Settings, Stats
from supervisor._engine.restarts import RestartWindow
from supervisor.errors import SupervisorError

log = logging.getLogger(__name__)

_READ = 1 << 18


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
                 on_writable: Callable[[HostProc], Any]) -> None:
        self.settings = settings
        self.sel = sel
        self.stats = stats
        self.life = life
        self.on_readable = on_readable
        self.on_writable = on_writable
        self.host: HostProc | None = None
        self.window = RestartWindow(settings.max_restarts, settings.restart_period)

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
                proc = subprocess.Popen(s.host_argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0, close_fds=True)
            except OSError as exc:
                raise SupervisorError(f"cannot start the host {s.host_argv!r}: {exc}"
                                      ) from exc
            assert proc.stdin is not None and proc.stdout is not None
            h = HostProc(proc, proc.stdin.fileno(), proc.stdout.fileno())
        os.set_blocking(h.wfd, False)
        os.set_blocking(h.rfd, False)
        self.sel.register(h.rfd, selectors.EVENT_READ, lambda mask: self.on_readable(h))
        self.host = h
        return h

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

    def lost(self, h: HostProc, why: str) -> bool:
        """The host is gone: stop it, and start a new one if it was started
        from an argv and restarts are within intensity.  True if restarted."""
        if not h.alive:
            return False
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
            return False
        verdict = self.window.record(time.monotonic())
        if not verdict.allowed:
            log.error("host restart intensity exceeded (%d within %ss): not restarting",
                      verdict.restarts, s.restart_period)
            return False
        try:
            new = self.start()
        except SupervisorError as exc:
            log.error("cannot restart the host: %s", exc)
            self.host = h
            return False
        new.frames_in, new.frames_out = h.frames_in, h.frames_out
        new.bad_frames, new.unknown_answers = h.bad_frames, h.unknown_answers
        self.stats["host_restarts"] += 1
        return True

    def stop(self) -> None:
        if self.host is not None:
            stop_host_process(self.host, grace=5.0)
        self.host = None
