"""A data dir's lock, and creating its shared segment (which, under its
default name, doubles as a second lock)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from supervisor.common.procs import same_process, start_time
from supervisor.errors import SegmentExistsError, SupervisorError
from supervisor.paths import DataDir
from supervisor.shmem.state import SharedState

log = logging.getLogger(__name__)


def create_segment(name: str, capacity: int, first_id: int, data_dir: Path) -> SharedState:
    """Create the segment `name`, its ids fenced at `first_id` (none is
    handed out until the fence rises: see :mod:`.ids`).  One left by a
    supervisor that was killed (its creator pid and start time no longer
    name a live process) is replaced; one whose creator still runs means
    another supervisor owns this data dir, which is refused."""
    for _ in range(2):
        try:
            return SharedState.create(capacity=capacity, name=name, first_id=first_id,
                                      id_limit=first_id)
        except SegmentExistsError:
            pass
        try:
            old = SharedState.attach(name, timeout=0.2)
        except SupervisorError as exc:  # not ours / half-written: stale either way
            log.warning("replacing unusable shared segment %r: %s", name, exc)
        else:
            alive, pid = old.creator_alive(), old.creator_pid
            old.close()
            if alive:
                raise SupervisorError(
                    f"another supervisor (pid {pid}) is running on data dir {data_dir}: "
                    "stop it first, or use another data dir")
            log.warning("replacing shared segment %r left by supervisor pid %d, which is gone",
                        name, pid)
        SharedState.remove(name)
    raise SupervisorError(f"cannot create shared segment {name!r}")


class DirLock:
    """``run/lock``: the pid and start time of the supervisor that holds the
    data dir, created whole or not at all (a hard link of a written file).
    One whose holder is gone is replaced; one whose holder runs is refused.
    It holds whatever the segment is named (``shm_name``), so that two
    supervisors never share a data dir, and is removed at a clean stop."""

    def __init__(self, paths: DataDir) -> None:
        self.path = paths.lock_file
        self.mine = f"{os.getpid()} {start_time(os.getpid()) or 0.0!r}"
        tmp = self.path.with_name(f"lock.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(self.mine)
            self._take(tmp, paths.root)
        except OSError as exc:  # (a full disk, a read-only dir, no hard links there)
            raise SupervisorError(f"cannot take the data dir's lock {self.path}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass

    def _take(self, tmp: Path, root: Path) -> None:
        for _ in range(2):
            try:
                os.link(tmp, self.path)
                return
            except FileExistsError:
                pass
            pid, started = self._holder()
            if pid is not None and same_process(pid, started, tolerance=1e-3):
                raise SupervisorError(
                    f"another supervisor (pid {pid}) is running on data dir "
                    f"{root}: stop it first, or use another data dir")
            log.info("replacing the data dir's lock left by pid %s, which is gone", pid)
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        raise SupervisorError(f"cannot take the data dir's lock {self.path}")

    def _holder(self) -> tuple[int | None, float]:
        try:
            pid, started = self.path.read_text().split()
            return int(pid), float(started)
        except (OSError, ValueError):  # gone meanwhile, or not ours: stale
            return None, 0.0

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        try:
            if self.path.read_text() == self.mine:
                self.path.unlink()
        except OSError:
            pass


def note_segment(paths: DataDir, name: str) -> None:
    """Say in ``run/segment`` which segment clients attach (see
    :meth:`DataDir.segment_in_use`): written whole, before the control
    socket opens."""
    tmp = paths.segment_file.with_name(f"segment.{os.getpid()}.tmp")
    tmp.write_text(name)
    os.replace(tmp, paths.segment_file)
