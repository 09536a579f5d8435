"""The layout of a data dir, spelled out once.

::

    <data_dir>/
        db/sagas.db          the saga log (only the supervisor writes it)
        db/log-url           or, when the log is on PostgreSQL, its URL
                             (never with a password), for the command line
        run/                 mode 0700; exists while a supervisor runs
            control          the path of the control socket, as text
            ctl.sock         the control socket (when its path fits AF_UNIX)
            health.json      refreshed every health interval

The shared segment's name and the fallback place of a control socket whose
path would be too long are derived from the data dir's real path, so any
process finds them from the data dir alone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

# AF_UNIX socket paths hold 108 bytes on Linux, NUL included
_MAX_SOCKET_PATH = 100


def segment_name(data_dir: str | os.PathLike[str]) -> str:
    """The shared segment's name for a data dir: stable, so a client (or the
    next supervisor) finds it from the data dir alone."""
    digest = hashlib.sha1(os.path.realpath(data_dir).encode()).hexdigest()[:16]
    return f"saga-{digest}"


@dataclass(frozen=True)
class DataDir:
    """Where everything of one supervisor lives."""

    root: Path

    @classmethod
    def of(cls, data_dir: str | os.PathLike[str]) -> DataDir:
        return cls(Path(data_dir))

    @property
    def db(self) -> Path:
        return self.root / "db" / "sagas.db"

    @property
    def log_url_file(self) -> Path:
        return self.root / "db" / "log-url"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def control_file(self) -> Path:
        """Holds the control socket's path, as text."""
        return self.run / "control"

    @property
    def health_file(self) -> Path:
        return self.run / "health.json"

    @property
    def segment(self) -> str:
        """The shared segment's default name (``shm_name`` may give another)."""
        return segment_name(self.root)

    @property
    def segment_file(self) -> Path:
        """Holds the running supervisor's segment name, as text."""
        return self.run / "segment"

    @property
    def lock_file(self) -> Path:
        """The data dir's lock when its segment has a name of its own."""
        return self.run / "lock"

    def segment_in_use(self) -> str:
        """The segment a client attaches: the one the running supervisor
        named in ``run/segment``, else the default."""
        try:
            name = self.segment_file.read_text().strip()
        except OSError:
            return self.segment
        return name or self.segment

    def socket_dir(self) -> Path:
        """Where the control socket is bound: ``run/`` when the path fits
        AF_UNIX, else a private directory (mode 0700) under the system's
        temporary directory, named after the segment."""
        if len(os.fsencode(self.run / "ctl.sock")) <= _MAX_SOCKET_PATH:
            return self.run
        import tempfile

        return Path(tempfile.gettempdir()) / f"{self.segment}.d"
