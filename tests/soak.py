"""The soak: SIGKILL the launcher (with its supervisor), its workers and its
host at seeded random points, restart on the same data dir, and check the
invariants after every restart and at the end.  Outside the default test run:

    .venv/bin/python -m tests.soak --kills 1000 --seed 1 [--fuzz-cases 100000]
    .venv/bin/python -m tests.soak --kills 200 --seed 1 --log auto   # on PostgreSQL
    .venv/bin/python -m tests.soak --fleet 3 --faults 300 --seed 1 --log auto
                                       # a fleet of 3 nodes: tests/soak_fleet.py

``--log URL`` keeps the log on that PostgreSQL server (a fresh database per
run is best); ``--log auto`` starts a throwaway server (tests/_pg.py) and
also restarts it at seeded random points under load (``--pg-restarts``, the
share of sessions that see one), which the supervisors ride out
(``log_retry``).

Checked after each launcher's death: its workers and host exit (no orphan
process); every ended saga has no pending step and no step started after its
end; ids never go back.  At the end, a clean supervisor resumes what was left
and stops with drain: then nothing is running or compensating, no step is
pending, no segment is left in /dev/shm, and every (saga id, step) the
recording host received is a logged step that was started before its saga
ended (write-ahead; no work after the end).  ``--fuzz-cases N`` then runs the
host-frame and control-request fuzz (tests/test_fuzz.py) with N cases each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


class Violation(AssertionError):
    pass


def _health(data: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data / "run" / "health.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def _check_log(db: Path | str, prev_max: int, final: bool) -> int:
    """The invariants over the whole log (the SQLite file, or a PostgreSQL
    URL), in SQL (it holds 100,000s of sagas): returns the highest id, which
    must not go back."""
    from .conftest import log_reader

    conn = log_reader(db)
    try:
        bad = conn.execute(
            "SELECT s.saga_id, s.state, st.step_index, st.state FROM saga s JOIN saga_step st "
            "USING (saga_id) WHERE s.state NOT IN ('queued', 'running', 'compensating') AND "
            "(st.state = 'pending' OR st.started_at > s.ended_at + 1e-6) LIMIT 3").fetchall()
        if bad:
            raise Violation(f"ended sagas with a pending step or a step after their end: {bad}")
        if final:
            left = conn.execute("SELECT saga_id, state FROM saga WHERE state IN "
                                "('queued', 'running', 'compensating') LIMIT 3").fetchall()
            if left:
                raise Violation(f"still running after the final drain: {left}")
        _check_limit(conn, final)
        top = int(conn.execute("SELECT coalesce(max(saga_id), 0) FROM saga").fetchall()[0][0])
    finally:
        conn.close()
    if top < prev_max:
        raise Violation(f"ids went back: the highest id is {top}, it was {prev_max}")
    return top


def _check_limit(conn: Any, final: bool) -> None:
    """Sagas of the limited kind never ran more than LIMIT at once: a sweep
    over their [started_at, ended_at] (a dequeued saga's start is when it left
    the queue; an end at the same instant frees its slot first)."""
    from ._soak_launcher import LIMIT

    edges: list[tuple[float, int]] = []
    for start, end in conn.execute("SELECT started_at, ended_at FROM saga WHERE name = "
                                   "'limited' AND state != 'queued'"):
        edges.append((float(start), 1))
        if end is not None:
            edges.append((float(end), -1))
        elif final:
            raise Violation("a limited saga without an end after the final drain")
    running = 0
    for _t, step in sorted(edges):
        running += step
        if running > LIMIT:
            raise Violation(f"more than {LIMIT} sagas of the limited kind ran at once")


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = pids
    while left and time.monotonic() < deadline:
        left = [p for p in left if psutil.pid_exists(p) and
                psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.02)
    return left


def soak(kills: int, seed: int, work: Path, url: str | None = None,
         cluster: Any = None, restarts: float = 0.0) -> dict[str, Any]:
    """`url`: the log on that PostgreSQL server; `cluster`: a server of our
    own, restarted during a `restarts` share of the sessions."""
    rng = random.Random(seed)
    data = work / "data"
    where: Path | str = url or data / "db" / "sagas.db"
    record = work / "host-record.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_HOST_RECORD": str(record),
           "SAGA_LOG_LEVEL": "CRITICAL"}
    done = Counter[str]()
    prev_max = 0
    sessions = 0
    started = time.monotonic()
    while done["kills"] < kills:
        sessions += 1
        proc = subprocess.Popen([sys.executable, "-m", "tests._soak_launcher", str(data),
                                 str(rng.randrange(1 << 30)), *([url] if url else [])],
                                cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise Violation(f"session {sessions}: the launcher did not start "
                            f"(exit {proc.wait(30)})")
        report = None
        for _ in range(rng.randint(0, 3)):  # worker and host kills inside the session
            time.sleep(rng.uniform(0.05, 0.4))
            report = _health(data)
            if report is None or proc.poll() is not None:
                break
            targets = [w["pid"] for w in report["workers"] if w.get("alive")]
            if report.get("host") and report["host"].get("alive"):
                targets.append(report["host"]["pid"])
            if targets:
                victim = rng.choice(targets)
                try:
                    os.kill(victim, signal.SIGKILL)
                    done["kills"] += 1
                    done["host kills" if report.get("host") and
                         victim == report["host"]["pid"] else "worker kills"] += 1
                except ProcessLookupError:
                    pass
        if cluster is not None and rng.random() < restarts:
            time.sleep(rng.uniform(0.02, 0.3))
            cluster.restart()  # under load: the launcher reconnects and goes on
            done["database restarts"] += 1
        time.sleep(rng.uniform(0.02, 0.5))
        report = _health(data) or report
        if proc.poll() is not None:
            raise Violation(f"session {sessions}: the launcher exited by itself "
                            f"({proc.returncode})")
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        done["kills"] += 1
        done["launcher kills"] += 1
        if report is not None:
            for k in ("replayed", "reissued", "worker_restarts", "host_restarts",
                      "poison_sagas", "reopened"):
                done[k] += int(report["stats"].get(k, 0))
        orphans = _wait_gone(children, 15.0)
        if orphans:
            raise Violation(f"session {sessions}: processes outlived their launcher: "
                            f"{[psutil.Process(p).cmdline() for p in orphans]}")
        if url or (data / "db" / "sagas.db").exists():
            prev_max = _check_log(where, prev_max, final=False)
        if sessions % 25 == 0:
            print(f"  {done['kills']} kill points, {sessions} sessions, "
                  f"highest id {prev_max} (ids skip the rest of a dead run's block), "
                  f"{time.monotonic() - started:.0f}s", flush=True)
    return finish(data, record, dict(done), sessions, prev_max, time.monotonic() - started,
                  url)


def finish(data: Path, record: Path, done: dict[str, Any], sessions: int, prev_max: int,
           elapsed: float, url: str | None = None) -> dict[str, Any]:
    from supervisor import Supervisor
    from supervisor.paths import segment_name

    from .conftest import HOST_ARGV, read_log
    from ._soak_launcher import LIMIT
    from .sagas import CompensatingSaga, EchoSaga, LimitedSaga, RetrySaga, StepperSaga

    where: Path | str = url or data / "db" / "sagas.db"
    sagas, _ = read_log(where)
    left = [i for i, r in sagas.items() if r["state"] in ("queued", "running", "compensating")]
    sup = Supervisor(data, workers=2, host=HOST_ARGV, log=url)
    sup.register_kind(StepperSaga)
    sup.register_kind(CompensatingSaga)
    sup.register_kind(EchoSaga, replay=False)
    sup.register_kind(LimitedSaga, max_in_flight=LIMIT)
    sup.register_kind(RetrySaga)
    with sup:
        for sid in left:
            sup.wait(sid, 120)
        fresh = sup.spawn(StepperSaga(0, steps=1, seconds=0.0))
        if fresh <= prev_max:
            raise Violation(f"id {fresh} reused (the log went up to {prev_max})")
        sup.wait(fresh, 30)
    _check_log(where, prev_max, final=True)
    sagas, steps = read_log(where)
    if os.path.exists("/dev/shm/" + segment_name(data)):
        raise Violation("the segment was left in /dev/shm")
    logged = {(sid, st["step_index"]): st for sid, v in steps.items() for st in v}
    got = Counter[tuple[int, int]]()
    late = 0
    for line in record.read_text().splitlines():
        sid_s, step_s, t_s = line.split()
        key = (int(sid_s), int(step_s))
        got[key] += 1
        st = logged.get(key)
        if st is None:
            comp = any(json.loads(s.get("compensation_json") or "{}").get("step") == key[1]
                       for s in steps.get(key[0], []))
            if not comp:
                raise Violation(f"the host got saga {key[0]} step {key[1]}, never logged")
            continue
        ended = sagas[key[0]]["ended_at"]
        if st["started_at"] > ended:
            raise Violation(f"saga {key[0]} step {key[1]} was started after its end")
        if float(t_s) > ended + 0.5:
            late += 1
    states = Counter(r["state"] for r in sagas.values())
    return {**done, "sessions": sessions, "sagas": len(sagas), "states": dict(states),
            "commands the host received": sum(got.values()),
            "duplicates seen by the host (re-issued commands)":
            sum(n - 1 for n in got.values() if n > 1),
            "received over 0.5 s after the saga's end": late,
            "elapsed_s": round(elapsed)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="keep the data here")
    ap.add_argument("--fuzz-cases", type=int, default=0,
                    help="then run the fuzz tests with this many cases each")
    ap.add_argument("--fuzz-only", action="store_true", help="skip the kills")
    ap.add_argument("--log", default=None, metavar="URL|auto",
                    help="the log on this PostgreSQL server; 'auto': a throwaway server of "
                         "our own, restarted under load")
    ap.add_argument("--pg-restarts", type=float, default=0.2, metavar="SHARE",
                    help="with --log auto: the share of sessions that see a database restart")
    ap.add_argument("--fleet", type=int, default=0, metavar="N",
                    help="a fleet of N nodes on the --log server (tests/soak_fleet.py)")
    ap.add_argument("--faults", type=int, default=300, help="with --fleet: fault points")
    args = ap.parse_args()
    # SIGTERM (a timeout, a kill) unwinds as an exception: the server of our own stops
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.fleet and not args.log:
        ap.error("--fleet needs --log URL (or --log auto)")
    if not args.fuzz_only:
        work = args.dir or Path(tempfile.mkdtemp(prefix="saga-soak-"))
        work.mkdir(parents=True, exist_ok=True)
        cluster = None
        url = args.log
        if url == "auto":
            from ._pg import Cluster

            cluster = Cluster()
            if cluster.url is None:
                print(f"soak: no PostgreSQL server: {cluster.why}", file=sys.stderr)
                return 2
            url = cluster.database(f"soak{args.seed}")
        try:
            if args.fleet:
                from .soak_fleet import fleet_soak

                print(f"soak: a fleet of {args.fleet} nodes, {args.faults} fault points, "
                      f"seed {args.seed}, in {work}, log on {url}", flush=True)
                print(json.dumps(fleet_soak(args.fleet, args.faults, args.seed, work, url,
                                            cluster), indent=2))
                return 0
            print(f"soak: {args.kills} kill points, seed {args.seed}, in {work}"
                  + (f", log on {url}" if url else ""), flush=True)
            print(json.dumps(soak(args.kills, args.seed, work, url, cluster,
                                  args.pg_restarts if cluster is not None else 0.0),
                             indent=2))
        finally:
            if cluster is not None:
                cluster.stop()
    if args.fuzz_cases:
        return fuzz(args.fuzz_cases, args.seed)
    return 0


FUZZ_CHUNK = 10_000  # cases per process: memory grows with the cases of one run


def fuzz(cases: int, seed: int) -> int:
    """Each fuzz test with `cases` cases, in chunks of FUZZ_CHUNK, each chunk
    a process of its own with a seed of its own; the two tests in parallel."""
    for start in range(0, cases, FUZZ_CHUNK):
        n = min(FUZZ_CHUNK, cases - start)
        env = {**os.environ, "SAGA_FUZZ_CASES": str(n)}
        procs = [subprocess.Popen([sys.executable, "-m", "pytest", "-q", "tests/test_fuzz.py",
                                   "-p", "no:cacheprovider", "-k", name,
                                   f"--hypothesis-seed={seed * 1000 + start // FUZZ_CHUNK}"],
                                  cwd=ROOT, env=env)
                 for name in ("host_stream", "control_request")]
        if any(p.wait() for p in procs):
            print(f"fuzz failed in the chunk of cases {start}-{start + n}", flush=True)
            return 1
        print(f"  fuzz: {start + n} cases of each test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
