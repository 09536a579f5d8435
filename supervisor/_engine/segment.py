"""Creating a data dir's shared segment, which doubles as its lock."""

from __future__ import annotations

import logging
from pathlib import Path

from supervisor.errors import SegmentExistsError, SupervisorError
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
