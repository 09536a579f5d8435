"""Alternating A/B of the end-to-end benchmark against an older commit.

    .venv/bin/python bench/ab.py BASE_REV [--pairs 3] [-k EXPR]

Checks BASE_REV out into a temporary git worktree (with this checkout's
compiled extension, so the C side must be the same), then runs
``bench/test_engine_e2e.py`` alternately there (A) and here (B), `--pairs`
times each, and prints sagas/s and the ratio to the raw host pipe of every
run and their means.  Alternating in one session is what makes the figures
comparable on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAW = "test_raw_host_round_trips"


def run(tree: Path, expr: str, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "pytest", "bench/test_engine_e2e.py", "-q",
           "-p", "no:cacheprovider", "-k", expr, f"--benchmark-json={out}"]
    subprocess.run(cmd, cwd=tree, check=True, capture_output=True)
    data = json.loads(out.read_text())
    return {b["name"]: float(b["extra_info"]["rate"]) for b in data["benchmarks"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("-k", default="raw_host or test_sagas[1-1-normal] or "
                                  "test_sagas[1-2-normal]")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="saga-ab-"))
    base = tmp / "base"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), args.base],
                   cwd=ROOT, check=True)
    try:
        for so in glob.glob(str(ROOT / "supervisor" / "_sagashm*.so")):
            shutil.copy(so, base / "supervisor")
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for i in range(args.pairs):
            for side, tree in (("A", base), ("B", ROOT)):
                r = run(tree, args.k, tmp / f"{side}{i}.json")
                runs[side].append(r)
                print(side, i + 1, "  ".join(f"{k.removeprefix('test_sagas')} {v:,.0f}/s"
                                             + (f" ({v / r[RAW]:.3f}x raw)" if k != RAW else "")
                                             for k, v in sorted(r.items())), flush=True)
        for side in "AB":
            names = sorted(runs[side][0])
            print(side, "mean", "  ".join(
                f"{k.removeprefix('test_sagas')} {statistics.mean(r[k] for r in runs[side]):,.0f}/s"
                + (f" ({statistics.mean(r[k] / r[RAW] for r in runs[side]):.3f}x raw)"
                   if k != RAW else "") for k in names))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
