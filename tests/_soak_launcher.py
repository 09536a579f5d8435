"""The launcher the soak runner kills (python -m tests._soak_launcher DATA SEED
[POSTGRESQL-URL]).

Spawns a mix until it is killed: multi-step sagas (replayed after a restart),
compensating sagas (replayed), sagas of a kind that opts out of replay, sagas
of a kind limited to 5 in flight (queued past that), and steps the host fails
at first (retried); some of them time out; now and then a batch of 2,500 the
loop starts over two turns.  The reference host records every command it gets
(SAGA_HOST_RECORD)."""

from __future__ import annotations

import random
import sys

from supervisor import Supervisor

from .conftest import HOST_ARGV
from .sagas import CompensatingSaga, EchoSaga, LimitedSaga, RetrySaga, StepperSaga

LIMIT = 5  # LimitedSaga's max_in_flight, here and in the soak's final drain

if __name__ == "__main__":
    data_dir, seed = sys.argv[1], int(sys.argv[2])
    url = sys.argv[3] if len(sys.argv) > 3 else None
    rng = random.Random(seed)
    sup = Supervisor(data_dir, workers=2, host=HOST_ARGV, health_interval=0.1,
                     max_restarts=50, restart_period=5.0, log=url, log_retry=30.0)
    sup.register_kind(StepperSaga)
    sup.register_kind(CompensatingSaga)
    sup.register_kind(EchoSaga, replay=False)
    sup.register_kind(LimitedSaga, max_in_flight=LIMIT)
    sup.register_kind(RetrySaga)
    sup.start()
    print("ready", flush=True)
    previous: list[int] = []
    n = 0
    while True:  # until SIGKILL: about two batches in flight at any time
        batch = []
        for _ in range(100):
            n += 1
            pick = rng.random()
            if pick < 0.1:
                saga = LimitedSaga(n, seconds=rng.uniform(0.0, 0.02), timeout=60.0)
            elif pick < 0.2:
                saga = RetrySaga({"op": "flaky", "succeed_at": rng.randint(1, 3), "n": n},
                                 attempts=3, backoff=0.005, timeout=60.0)
            elif pick < 0.6:
                saga = StepperSaga(n, steps=rng.randint(1, 4), seconds=rng.uniform(0.0, 0.02),
                                   timeout=rng.choice((60.0, 60.0, 0.05)))
            elif pick < 0.8:
                saga = CompensatingSaga("failed" if rng.random() < 0.5 else "host")
            else:
                saga = EchoSaga(n, steps=rng.randint(1, 3), last=rng.random() < 0.5)
            batch.append(sup.spawn(saga))
        if rng.random() < 0.1:  # now and then a batch the loop starts over two turns
            batch += sup.spawn_many([EchoSaga(n + i, last=rng.random() < 0.5)
                                     for i in range(2500)])
        for sid in previous:
            sup.wait(sid, 120)
        previous = batch
