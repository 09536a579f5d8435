"""A launcher that runs stepper sagas until it is killed (fault-matrix tests).

python -m tests._crash_launcher DATA_DIR SEED
"""

from __future__ import annotations

import random
import sys

from supervisor import Supervisor

from .conftest import HOST_ARGV
from .sagas import StepperSaga

if __name__ == "__main__":
    data_dir, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    sup = Supervisor(data_dir, workers=2, host=HOST_ARGV)
    sup.register_kind(StepperSaga)
    sup.start()
    print("ready", flush=True)
    previous: list[int] = []
    n = 0
    while True:  # until SIGKILL: ~2 batches of 200 in flight at any time
        batch = []
        for _ in range(200):
            n += 1
            batch.append(sup.spawn(StepperSaga(n, steps=rng.randint(1, 4),
                                               seconds=rng.uniform(0.0, 0.02))))
        for sid in previous:
            sup.wait(sid, 120)
        previous = batch
