"""The fleet soak: N nodes (one launcher each, with its own data dir and
recording host) on one PostgreSQL log, under seeded random faults, with the
fleet's invariants checked after every fault and at the end.  Outside the
default test run:

    .venv/bin/python -m tests.soak --fleet 3 --faults 300 --seed 1 --log auto

Faults, one per fault point, on a random node (the engines alternate by
node): SIGKILL (the launcher and its supervisor process, as a machine dies;
the node comes back under its name after a random delay, before or after
the others took its portable sagas over); SIGSTOP past its lease, then
SIGCONT (it must stop by itself, fenced, and is started again); and, with
``--log auto``, a restart of the database under load.  A network partition
is tested in tests/test_fleet.py (it needs a namespace per node), not here.

Checked after each fault: every ended saga has no pending step and no step
started after its end, and the kind limited to 5 across the fleet never ran
more than 5 at once (tests/soak.py's checks, over the whole log); one saga
per idempotency key and every claimed key names its saga.  At the end every node is started
again until nothing is left unfinished: every saga of a dead node was taken
over (portable), recovered by its node's return, or failed.  Then every
command a recording host received is a logged step, started before it was
received (write-ahead), sent by a node that owned the saga (its own id
range, or a saga taken over from there), and none was received over 0.5 s
after its saga's end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("thread", "process")


class Node:
    def __init__(self, work: Path, url: str, k: int) -> None:
        self.name, self.url = f"node-{k}", url
        self.engine = ENGINES[k % 2]
        self.data = work / self.name
        self.record = work / f"{self.name}-host.txt"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, seed: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_HOST_RECORD": str(self.record),
               "SAGA_LOG_LEVEL": "CRITICAL"}
        with open(self.data.parent / f"{self.name}-stderr.txt", "a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests._fleet_launcher", str(self.data), self.url,
                 self.name, str(seed), self.engine], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                stderr=err, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            from .soak import Violation

            raise Violation(f"{self.name} did not start: {line!r} (exit {self.proc.wait(60)}; "
                            f"see {self.data.parent / (self.name + '-stderr.txt')})")

    def pids(self) -> set[int]:
        assert self.proc is not None
        pids = {self.proc.pid}
        try:
            pids.add(int(json.loads((self.data / "run" / "health.json").read_text())
                         ["supervisor"]["pid"]))
        except (OSError, ValueError, KeyError):
            pass
        return pids

    def lapsed(self) -> bool:
        """It stopped because its lease ran out: by its own clock, or by the
        database's (its next commit was fenced), as its log says."""
        tail = (self.data.parent / f"{self.name}-stderr.txt").read_text()[-2000:]
        return "could not renew its lease in time" in tail or "is fenced: epoch" in tail

    def wait_lease_out(self, url: str) -> None:
        """Until its lease has run out by the database's clock."""
        import psycopg

        from .conftest import wait_for

        with psycopg.connect(url, autocommit=True) as conn:
            wait_for(lambda: conn.execute(
                "SELECT lease_until < now() FROM saga_node WHERE name = %s",
                (self.name,)).fetchone()[0], timeout=60, interval=0.05,
                what=f"{self.name}'s lease to run out")

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        from .conftest import wait_supervisor_gone

        self.signal(signal.SIGKILL)
        self.reap()
        wait_supervisor_gone(self.data)

    def reap(self, timeout: float = 60.0) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.wait(timeout)
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        self.proc = None
        return out


def _check_fleet(url: str, prev_max: int, final: bool) -> int:
    from .soak import Violation, _check_log
    from .conftest import log_reader

    top = _check_log(url, prev_max, final)
    conn = log_reader(url)
    try:
        bad = conn.execute("SELECT k.idem_key, k.saga_id, s.idem_key FROM saga_key k JOIN saga s "
                           "USING (saga_id) WHERE s.idem_key IS DISTINCT FROM k.idem_key "
                           "LIMIT 3").fetchall()
        if bad:
            raise Violation(f"a claimed key names a saga of another key: {bad}")
    finally:
        conn.close()
    return top


def fleet_soak(nodes: int, faults: int, seed: int, work: Path, url: str,
               cluster: Any = None) -> dict[str, Any]:
    from .soak import Violation

    rng = random.Random(seed)
    fleet = [Node(work, url, k) for k in range(1, nodes + 1)]
    for node in fleet:
        node.start(rng.randrange(1 << 30))
    done = Counter[str]()
    prev_max = 0
    started = time.monotonic()
    restarted = -1e9  # when the database was last restarted

    while done["fault points"] < faults:
        time.sleep(rng.uniform(0.1, 0.6))  # load in between
        node = rng.choice(fleet)
        pick = rng.random()
        if cluster is not None and pick < 0.1:
            cluster.restart()  # under load: the nodes reconnect and go on
            done["database restarts"] += 1
            restarted = time.monotonic()
        elif pick < 0.7:
            node.kill()
            done["node kills"] += 1
            if rng.random() < 0.5:  # back at once, or once the others may take over
                node.wait_lease_out(url)
            node.start(rng.randrange(1 << 30))
        else:
            node.signal(signal.SIGSTOP)
            node.wait_lease_out(url)  # paused past its lease, by the database's clock
            node.signal(signal.SIGCONT)
            out = node.reap(60.0)  # fenced: it stops by itself
            if "stopped:" not in out:
                raise Violation(f"{node.name} paused past its lease ran on: {out[-300:]!r}")
            done["node pauses"] += 1
            from .conftest import wait_supervisor_gone

            wait_supervisor_gone(node.data)
            node.start(rng.randrange(1 << 30))
        done["fault points"] += 1
        for other in fleet:
            if other.proc is not None and other.proc.poll() is not None:
                out = other.reap()
                if not (time.monotonic() - restarted < 30 and other.lapsed()):
                    raise Violation(f"{other.name} exited by itself: {out[-300:]!r}")
                # the database was away longer than its lease allows: it
                # stopped by its own clock, as it must; it comes back
                done["nodes stopped by a database restart longer than their lease"] += 1
                from .conftest import wait_supervisor_gone

                wait_supervisor_gone(other.data)
                other.start(rng.randrange(1 << 30))
        prev_max = _check_fleet(url, prev_max, final=False)
        if done["fault points"] % 25 == 0:
            print(f"  {done['fault points']} fault points, "
                  f"{time.monotonic() - started:.0f}s", flush=True)
    return _finish(fleet, url, dict(done), prev_max, time.monotonic() - started)


def _finish(fleet: list[Node], url: str, done: dict[str, Any], prev_max: int,
            elapsed: float) -> dict[str, Any]:
    """Every node stopped; then each started again under its name, idle,
    until nothing is left unfinished; then the checks over the hosts, in SQL
    (the hosts' records copied into a temporary table: a long soak's log
    and records do not fit in memory)."""
    import psycopg

    from supervisor import Supervisor

    from .conftest import HOST_ARGV, wait_for
    from ._soak_launcher import LIMIT
    from .sagas import EchoSaga, LimitedSaga, RetrySaga, StepperSaga
    from .soak import Violation

    for node in fleet:
        node.kill()
    sups = []
    for node in fleet:
        os.environ["SAGA_HOST_RECORD"] = str(node.record)  # (the host inherits it)
        sup = Supervisor(node.data, workers=1, host=HOST_ARGV, log=url, node=node.name,
                         engine=node.engine)
        sup.register_kind(StepperSaga, portable=True)
        sup.register_kind(EchoSaga, replay=False)
        sup.register_kind(RetrySaga)
        sup.register_kind(LimitedSaga, fleet_limit=LIMIT)
        sups.append(sup.start())
    os.environ.pop("SAGA_HOST_RECORD", None)
    conn = psycopg.connect(url, autocommit=True)
    try:
        try:
            wait_for(lambda: not conn.execute(
                "SELECT 1 FROM saga WHERE state IN ('queued', 'running', 'compensating') "
                "LIMIT 1").fetchone(), timeout=300, interval=0.5, what="every saga ended")
        finally:
            for sup in sups:
                sup.stop()
        _check_fleet(url, prev_max, final=True)
        conn.execute("CREATE TEMP TABLE got (node_no INTEGER, saga_id BIGINT, step INTEGER, "
                     "t DOUBLE PRECISION)")
        numbers = dict(conn.execute("SELECT name, node_no FROM saga_node").fetchall())
        with conn.cursor().copy("COPY got FROM STDIN") as cp:
            for node in fleet:
                with open(node.record) as lines:
                    for line in lines:
                        sid, step, t = line.split()
                        cp.write_row((numbers[node.name], int(sid), int(step), float(t)))
        for why, where in (
                ("never logged", "st.saga_id IS NULL"),
                ("received before it was logged", "st.started_at > g.t + 1e-3"),
                ("of a host-bound kind, on another node's host",
                 "g.saga_id >> 40 <> g.node_no AND s.name <> 'stepper'")):
            bad = conn.execute(
                "SELECT g.node_no, g.saga_id, g.step FROM got g LEFT JOIN saga_step st ON "
                "st.saga_id = g.saga_id AND st.step_index = g.step LEFT JOIN saga s ON "
                f"s.saga_id = g.saga_id WHERE {where} LIMIT 3").fetchall()
            if bad:
                raise Violation(f"commands (node, saga, step) {why}: {bad}")
        received, foreign, late = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE g.saga_id >> 40 <> g.node_no), "
            "count(*) FILTER (WHERE g.t > s.ended_at + 0.5) FROM got g JOIN saga s "
            "USING (saga_id)").fetchone()
        if late:
            raise Violation(f"{late} commands received over 0.5 s after their saga's end")
        states = dict(conn.execute("SELECT state, count(*) FROM saga GROUP BY state"))
        taken, keys = conn.execute("SELECT count(*) FILTER (WHERE node_no <> saga_id >> 40), "
                                   "count(idem_key) FROM saga").fetchone()
    finally:
        conn.close()
    return {**done, "sagas": sum(states.values()), "states": states,
            "sagas taken over (owned by another node than their id's)": taken,
            "commands the hosts received": received,
            "commands received for sagas taken over": foreign, "keys": keys,
            "elapsed_s": round(elapsed)}
