"""What the CLI's commands share: exit codes, times, the data dir's log, and
the one way of saying that no supervisor runs on a data dir."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_NONE, EXIT_CORRUPT, EXIT_USAGE = 0, 1, 2, 3, 64
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT (128 + 2)
DEFAULT_DATA_DIR = "./saga-data"


def db_path(data_dir: str) -> Path:
    from supervisor.paths import DataDir

    return DataDir.of(data_dir).db


def not_running(data_dir: str, why: str | None = None) -> str:
    """The one message for "no supervisor runs here", naming the data dir
    and how to point at another.  `why` may be a client's own "no supervisor
    is running on DIR (why)": only its why is kept."""
    said = f"no supervisor is running on {data_dir}"
    if why and why.startswith(said):
        why = why[len(said):].strip()
        why = why[1:-1] if why.startswith("(") and why.endswith(")") else why or None
    return (said + (f" ({why})" if why else "")
            + ": start one there, or name its data dir with --data-dir DIR or "
            "$SAGA_DATA_DIR")


_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$")
_UNIT = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
         "d": 86400.0}


def since(text: str) -> float:
    """``--since``: a span back from now (``90``, ``90s``, ``30m``, ``1h``,
    ``2d``) or an ISO 8601 time (``2026-12-06T10:00``, with or without an
    offset; without one it is local time).  Returns an epoch time."""
    m = _SPAN.match(text)
    if m:
        return time.time() - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since takes a span (90, 90s, 30m, 1h, 2d) or an ISO 8601 time, "
                         f"got {text!r}") from None
    if at.tzinfo is None:
        at = at.astimezone()  # local time
    return at.timestamp()


def iso(t: float | None) -> str | None:
    """ISO 8601 in local time with its UTC offset, to the millisecond."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=timezone.utc).astimezone().isoformat(
        timespec="milliseconds")


def open_log(data_dir: str, url: str | None = None) -> Any:
    """A read-only connection to the log (the PostgreSQL log at `url`, else
    the data dir's SQLite file), or exit 2 (none) / 3 (corrupt)."""
    from supervisor.store.sqlite import LogError, open_readonly
    from supervisor.store.seam import pointed
    from supervisor.paths import DataDir

    url = url or pointed(DataDir.of(data_dir))
    if url:
        from supervisor.errors import SupervisorError
        from supervisor.store.pg_read import Reader

        try:
            return Reader(url)
        except SupervisorError as exc:  # (LogError: it names the server, never a password)
            print(f"{exc} (name the log with --log URL or $SAGA_LOG)", file=sys.stderr)
            raise SystemExit(EXIT_NONE) from None

    path = db_path(data_dir)
    if not path.exists():
        print(f"no saga log at {path}: name the data dir with --data-dir DIR or "
              "$SAGA_DATA_DIR", file=sys.stderr)
        raise SystemExit(EXIT_NONE)
    try:
        return open_readonly(path)
    except LogError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(EXIT_CORRUPT) from None
