"""Run in other processes by the client tests (importable under spawn)."""

from __future__ import annotations

from typing import Any

from supervisor import SagaClient

from . import sagas as S


def spawn_many(data_dir: str, n: int, conn: Any) -> None:
    with SagaClient(data_dir) as client:
        ids = [client.spawn(S.EchoSaga(i, steps=2)) for i in range(n)]
        outs = [client.wait(i, 60) for i in ids]
        conn.send([(o.saga_id, o.state) for o in outs])


def spawn_and_tell(data_dir: str, n: int, conn: Any) -> None:
    """Spawn one saga at a time and send its id the moment spawn() returns;
    the next only once the other side has its outcome."""
    with SagaClient(data_dir) as client:
        for i in range(n):
            conn.send(client.spawn(S.EchoSaga(i)))
            try:
                conn.recv()
            except EOFError:  # the test failed and went: so does this
                return
    conn.send(None)


def cancel_from_afar(data_dir: str, saga_id: int, conn: Any) -> None:
    with SagaClient(data_dir) as client:
        won = client.cancel(saga_id, "remote operator")
        conn.send((won, client.wait(saga_id, 30).reason))


def spawn_keyed(data_dir: str, keys: list[str], go: Any, conn: Any) -> None:
    """Spawn one saga per key, all at once with the other processes."""
    with SagaClient(data_dir) as client:
        go.wait(30)
        conn.send([client.spawn(S.InstantSaga() if k.endswith("i") else S.SleepSaga(0.2),
                                key=k) for k in keys])
