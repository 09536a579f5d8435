"""Worker functions for the shared-memory race tests (importable under spawn)."""

from __future__ import annotations

import array
import random

from supervisor import SharedState


def allocate_ids(name: str, count: int, seed: int, out_path: str) -> None:
    """Allocate `count` ids mixing next_id() and reserve_ids(); write them."""
    rng = random.Random(seed)
    state = SharedState.attach(name)
    ids = array.array("Q")
    while len(ids) < count:
        if rng.random() < 0.5:
            ids.append(state.next_id())
        else:
            n = min(rng.randint(1, 200), count - len(ids))
            ids.extend(state.reserve_ids(n))
    state.close()
    with open(out_path, "wb") as f:
        ids.tofile(f)


def claim_rounds(name: str, conn: object, order_seed: int) -> None:
    """Serve claim rounds: receive (first, n), claim every id in an order of our
    own, answer with the bytes of a bitmap of the ids we won."""
    state = SharedState.attach(name)
    rng = random.Random(order_seed)
    claim = state.claim
    while True:
        msg = conn.recv()  # type: ignore[attr-defined]
        if msg is None:
            break
        first, n = msg
        ids = list(range(first, first + n))
        mode = rng.randrange(3)
        if mode == 1:
            ids.reverse()
        elif mode == 2:
            rng.shuffle(ids)
        won = bytearray(n)
        for i in ids:
            if claim(i):
                won[i - first] = 1
        conn.send_bytes(bytes(won))  # type: ignore[attr-defined]
    state.close()


def attach_and_hold(name: str, conn: object) -> None:
    """Attach, allocate a little, report, then wait to be killed."""
    state = SharedState.attach(name)
    got = [state.next_id() for _ in range(10)]
    conn.send(got)  # type: ignore[attr-defined]
    conn.recv()  # type: ignore[attr-defined]  # blocks until killed


def attach_and_exit(name: str) -> None:
    state = SharedState.attach(name)
    state.next_id()
    # no close(): exit with the segment mapped, as a careless client would
