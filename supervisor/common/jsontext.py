"""Checking that a text is JSON without building its objects, on the loop's
hot paths (a client's spawn snapshots, the answer to a last step)."""

from __future__ import annotations

import json
import json.scanner
from typing import Any

# json's own C scanner, called directly: json.loads of a small answer is ~2.3
# us here (the encoding sniffed, then three Python frames), this ~0.4 us
_scan: Any = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def is_one_json_value(text: str) -> bool:
    """Whether `text` is exactly one JSON value, with nothing around it.
    False also for what json.loads would take with whitespace around it:
    the callers then ask json.loads itself, which says what is wrong."""
    try:
        return bool(_scan(text, 0)[1] == len(text))
    except (StopIteration, ValueError, RecursionError):
        return False
