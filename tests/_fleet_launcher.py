"""A node the fleet soak kills, pauses and restarts (python -m
tests._fleet_launcher DATA URL NAME SEED ENGINE).

Spawns a mix until it is killed or fenced: multi-step sagas of a portable
kind (taken over by the other nodes when this one dies), sagas of a
host-bound kind that opts out of replay (failed when their node comes back)
and of a host-bound replayed kind (they wait for their node), of a kind
limited across the fleet (at most LIMIT running at once, fleet-wide), and keyed
sagas whose keys the nodes share (one saga per key in the fleet).  The
reference host records every command it gets (SAGA_HOST_RECORD).  Fenced
(paused past its lease, or cut off), it prints why and exits 0."""

from __future__ import annotations

import random
import sys

from supervisor import Supervisor

from .conftest import HOST_ARGV, crash_kw
from ._soak_launcher import LIMIT
from .sagas import EchoSaga, InstantSaga, LimitedSaga, RetrySaga, StepperSaga

LEASE = 3.0  # seconds: a database restart (about a second) is ridden out
KEYS = 2000  # the key space the nodes share

if __name__ == "__main__":
    data, url, name, seed, engine = sys.argv[1:6]
    rng = random.Random(int(seed))
    sup = Supervisor(data, workers=1, host=HOST_ARGV, health_interval=0.1, log=url, node=name,
                     node_lease=LEASE, log_retry=30.0, max_restarts=50, restart_period=5.0,
                     engine=engine, **crash_kw(engine))
    sup.register_kind(StepperSaga, portable=True)
    sup.register_kind(EchoSaga, replay=False)
    sup.register_kind(RetrySaga)
    sup.register_kind(LimitedSaga, fleet_limit=LIMIT)  # (the soak checks it, fleet-wide)
    sup.start()
    print("ready", flush=True)
    previous: list[int] = []
    n = 0
    try:
        while True:
            batch = []
            for _ in range(40):
                n += 1
                pick = rng.random()
                if pick < 0.5:
                    batch.append(sup.spawn(StepperSaga(n, steps=rng.randint(1, 4),
                                                       seconds=rng.uniform(0.0, 0.02),
                                                       timeout=120.0)))
                elif pick < 0.65:
                    batch.append(sup.spawn(EchoSaga(n, steps=rng.randint(1, 3),
                                                    last=rng.random() < 0.5)))
                elif pick < 0.7:
                    batch.append(sup.spawn(LimitedSaga(n, seconds=rng.uniform(0.0, 0.02),
                                                       timeout=120.0)))
                elif pick < 0.75:
                    batch.append(sup.spawn(RetrySaga({"op": "flaky", "n": n,
                                                      "succeed_at": rng.randint(1, 2)},
                                                     attempts=3, backoff=0.005,
                                                     timeout=120.0)))
                else:
                    sup.spawn(InstantSaga(), key=f"k{rng.randrange(KEYS)}")
            for sid in previous:
                sup.wait(sid, 120)
            previous = batch
    except Exception as exc:  # fenced: it stopped under us
        print(f"stopped: {type(exc).__name__}: {sup.error!r}", flush=True)
    finally:
        sup.stop()
