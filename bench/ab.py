"""Alternating A/B of the end-to-end benchmark against an older commit.

    .venv/bin/python bench/ab.py BASE_REV [--pairs 3] [-k EXPR] [--latency]

Checks BASE_REV out into a temporary git worktree (with this checkout's
compiled extension, so the C side must be the same), then runs
``bench/test_engine_e2e.py`` alternately there (A) and here (B), `--pairs`
times each, and prints sagas/s and the ratio to the raw host pipe of every
run and their means.  Alternating in one session is what makes the figures
comparable on a shared, noisy machine.  With ``--latency`` the latency
benchmarks that ``-k`` names are run the same way, and each prints its p50,
p99, their ratio and the CPU a saga by process.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RAW = "test_raw_host_round_trips"


def _bench(tree: Path, expr: str, out: Path) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "pytest", "bench/test_engine_e2e.py", "-q",
           "-p", "no:cacheprovider", "-k", expr, f"--benchmark-json={out}"]
    subprocess.run(cmd, cwd=tree, check=True, capture_output=True)
    found: list[dict[str, Any]] = json.loads(out.read_text())["benchmarks"]
    return found


def run(tree: Path, expr: str, out: Path) -> dict[str, float]:
    return {b["name"]: float(b["extra_info"]["rate"]) for b in _bench(tree, expr, out)}


def latency(tree: Path, expr: str, out: Path) -> list[str]:
    """One line a latency benchmark: p50, p99, their ratio, the CPU a saga
    by process and the machine's share of its cores."""
    lines = []
    for b in _bench(tree, expr, out):
        x = b["extra_info"]
        if "latency_median_ms" not in x:
            continue
        cpu = " ".join(f"{k} {v:.0f}" for k, v in x["cpu_us_per_saga"].items())
        lines.append(f"{b['name'].removeprefix('test_latency_'):<36} p50 "
                     f"{x['latency_median_ms']:.2f} p99 {x['latency_p99_ms']:.2f} ms "
                     f"({x['p99_over_p50']:.2f}x)  cpu/saga us: {cpu}  busy "
                     f"{x['cores_busy']['machine']:.0%}  commits/saga "
                     f"{x['commits_per_saga']}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("-k", default="raw_host or test_sagas[1-1-normal] or "
                                  "test_sagas[1-2-normal]")
    ap.add_argument("--latency", action="store_true",
                    help="latency benchmarks (-k names them): p50, p99, CPU a saga")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="saga-ab-"))
    base = tmp / "base"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), args.base],
                   cwd=ROOT, check=True)
    try:
        for so in glob.glob(str(ROOT / "supervisor" / "_sagashm*.so")):
            shutil.copy(so, base / "supervisor")
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for i in range(args.pairs if args.latency else 0):
            for side, tree in (("A", base), ("B", ROOT)):
                for line in latency(tree, args.k, tmp / f"{side}{i}.json"):
                    print(side, i + 1, line, flush=True)
        for i in range(0 if args.latency else args.pairs):
            for side, tree in (("A", base), ("B", ROOT)):
                r = run(tree, args.k, tmp / f"{side}{i}.json")
                runs[side].append(r)
                print(side, i + 1, "  ".join(f"{k.removeprefix('test_sagas')} {v:,.0f}/s"
                                             + (f" ({v / r[RAW]:.3f}x raw)" if k != RAW else "")
                                             for k, v in sorted(r.items())), flush=True)
        for side in "AB" if runs["A"] else "":
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
