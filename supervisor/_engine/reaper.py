"""A shared segment never outlives its supervisor: the reaper.

The creator unlinks its segment when it stops (:meth:`Engine.teardown`), but a
launcher ended by SIGTERM without a handler, SIGKILL, or an exception that
skips its ``stop()`` cannot; a segment left in /dev/shm would stay there until
a supervisor starts again on the same data dir, which for a temporary data
dir is never.  So, as the standard library's resource tracker does for its
own shared memory, the engine starts a tiny process of its own (no import of
this package, ~10 ms of CPU) that holds the read end of a pipe whose write end
only the engine's process has.  When the pipe ends, whoever closed it (a clean
stop, or the kernel at the process's death), the reaper unlinks the segment
if the name still names the very file it was given (device and inode), so a
segment that a newer supervisor made under the same name is left alone.  No
signal handler of the application is touched.  The sagas in flight stay in
the log and are recovered at the next start, as after any crash.
"""

from __future__ import annotations

import os
import subprocess
import sys

_CODE = """
import os, sys
path, dev, ino = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    while os.read(0, 65536):
        pass
except OSError:
    pass
try:
    st = os.stat(path)
    if (st.st_dev, st.st_ino) == (dev, ino):
        os.unlink(path)
except OSError:
    pass
"""


class Reaper:
    """Unlinks the segment at `path` once this process is gone (or closes us)."""

    def __init__(self, path: str) -> None:
        st = os.stat(path)
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _CODE, path, str(st.st_dev), str(st.st_ino)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True, start_new_session=True)  # (a terminal's Ctrl-C is not for it)

    def close(self) -> None:
        """We unlinked the segment ourselves: let the reaper go."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(5.0)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
