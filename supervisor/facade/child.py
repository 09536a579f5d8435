"""The process engine's supervisor process (``python -m
supervisor.facade.serve``) from the launcher's side: starting it (its
environment, its session, the signal it must not die of while it starts,
the start blob on its stdin), and reading its last words once it exited."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence


def launch(blob: bytes, fds: Sequence[int] | None) -> subprocess.Popen[bytes]:
    """The supervisor process, started, with `blob` written to its stdin
    (a u32 big-endian length first); `fds` are passed to it (``host_fds``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    # a terminal's Ctrl-C is the launcher's to handle: the supervisor
    # process gets a session of its own, and is born with SIGINT blocked,
    # for the child resets its handlers before it leaves our process group
    # (it ignores SIGINT, then unblocks it: see serve.main)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.facade.serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, bufsize=0, env=env,
            pass_fds=tuple(fds) if fds else (), start_new_session=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert proc.stdin is not None
    try:
        proc.stdin.write(len(blob).to_bytes(4, "big") + blob)
        proc.stdin.flush()
    except BrokenPipeError:
        pass  # (it died at once: its exit says why)
    return proc


def last_words(proc: subprocess.Popen[bytes], limit: float = 5.0) -> list[str]:
    """The lines it wrote on its stdout that were not read yet, once it
    exited: until the pipe ends, or for at most `limit` seconds (a child of
    its that outlived it may hold the pipe open: the stop must not wait on
    it), then the pipe is closed."""
    if proc.stdout is None:
        return []
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    got = b""
    deadline = time.monotonic() + limit
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and sel.select(left):
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                break
            got += chunk
    proc.stdout.close()
    return got.decode("utf-8", "replace").splitlines()
