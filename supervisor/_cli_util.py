"""What the CLI's commands share: exit codes, times, the data dir's log."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_NONE, EXIT_CORRUPT, EXIT_USAGE = 0, 1, 2, 3, 64
DEFAULT_DATA_DIR = "./saga-data"


def db_path(data_dir: str) -> Path:
    from supervisor.paths import DataDir

    return DataDir.of(data_dir).db


def iso(t: float | None) -> str | None:
    """ISO 8601 in local time with its UTC offset, to the millisecond."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=timezone.utc).astimezone().isoformat(
        timespec="milliseconds")


def open_log(data_dir: str) -> Any:
    """A read-only connection to the log, or exit 2 (none) / 3 (corrupt)."""
    from supervisor.log import LogError, open_readonly

    path = db_path(data_dir)
    if not path.exists():
        print(f"no saga log at {path} (is --data-dir or $SAGA_DATA_DIR right?)",
              file=sys.stderr)
        raise SystemExit(EXIT_NONE)
    try:
        return open_readonly(path)
    except LogError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(EXIT_CORRUPT) from None
