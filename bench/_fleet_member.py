"""One member of a fleet benchmark, in a process of its own:

    python -m bench._fleet_member WHO URL NAME N DATA_DIR

WHO: ``ours`` (a supervisor node on the PostgreSQL log at URL, one-step
sagas), ``keyed`` (each spawn with a key of its own), ``limited`` (a kind
with a fleet-wide limit of 64), or ``dbos`` (a DBOS Transact executor on the
same server, one-step workflows, one at a time as its bench does).  Prints
``ready``, waits for a line on stdin, runs N, prints {"n": N, "s": seconds}.
"""

from __future__ import annotations

import json
import sys
import time

from tests.conftest import HOST_ARGV
from tests.sagas import EchoSaga

FLEET_LIMIT = 64


def ours(who: str, url: str, name: str, n: int, data: str) -> float:
    from supervisor import Supervisor

    sup = Supervisor(data, workers=2, host=HOST_ARGV, log=url, node=name)
    if who == "limited":
        sup.register_kind(EchoSaga, fleet_limit=FLEET_LIMIT)
    with sup:
        sup.wait(sup.spawn(EchoSaga(-1)), 60)  # warm
        print("ready", flush=True)
        sys.stdin.readline()
        t = time.perf_counter()
        if who == "keyed":
            ids = [sup.spawn(EchoSaga(i), key=f"{name}-{i}") for i in range(n)]
        else:
            ids = [sup.spawn(EchoSaga(i)) for i in range(n)]
        for sid in ids:
            if not sup.wait(sid, 300).completed:
                raise SystemExit(f"saga {sid} did not complete")
        return time.perf_counter() - t


def dbos(url: str, name: str, n: int) -> float:
    from dbos import DBOS

    from bench.test_peer_dbos import dbos_launch

    one_step = dbos_launch(url, executor_id=name)
    try:
        one_step(-1)
        print("ready", flush=True)
        sys.stdin.readline()
        t = time.perf_counter()
        for i in range(n):
            one_step(i)
        return time.perf_counter() - t
    finally:
        DBOS.destroy(destroy_registry=True)


if __name__ == "__main__":
    who, url, name, n, data = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \
        sys.argv[5]
    took = dbos(url, name, n) if who == "dbos" else ours(who, url, name, n, data)
    print(json.dumps({"n": n, "s": took}), flush=True)
