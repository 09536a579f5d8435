"""The package stays mypy-strict clean (the binding layer excepted, see pyproject)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_mypy_strict_clean() -> None:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
