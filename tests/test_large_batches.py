"""A batch of spawns larger than a turn's slice (2,048 sagas) is started a
slice a turn, from a launcher's ``spawn_many`` and from a client's alike, so
that the workers, the log and the host work on one slice while the loop
starts the next (issue 23).  What a batch promised still holds: all or none
start, a durable batch returns once every saga of it is logged, what a
client sends after a batch waits for the whole batch, and a stop in the
middle of one still gives each of its sagas a logged outcome.  Real
workers, the real host, a real log."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

import supervisor.clients.core as core_mod
import supervisor.wire.requests as rq
from supervisor import SagaClient, SharedState, SpawnError, Supervisor
from supervisor.common.future import Future
from supervisor._engine.inbox import Inbox, SpawnMany, Stop
from supervisor._engine.requests import Requests
from supervisor.protocol import STATE_DICT
from supervisor.wire.codec import SagaSpec

from . import _suite, sagas as S
from ._parts import Parts
from .conftest import read_log, record_requests

Make = Callable[..., Supervisor]

# every behaviour test here runs on both engines and both stores
sup_engine = _suite.both_engines
sup_store = _suite.both_stores

N = 5000  # three slices


def test_a_durable_batch_returns_once_every_saga_of_it_is_logged(make_sup: Make) -> None:
    sup = make_sup()
    ids = sup.spawn_many([S.InstantSaga() for _ in range(N)], durable=True)
    logged, _ = read_log(sup)
    assert [i for i in ids if i not in logged] == []
    with SagaClient(sup.data_dir) as client:
        more = client.spawn_many([S.InstantSaga() for _ in range(N)], durable=True)
        logged, _ = read_log(sup)
        assert [i for i in more if i not in logged] == []
        assert all(client.wait(i, 30).completed for i in more)
    assert all(sup.wait(i, 30).completed for i in ids)


def test_what_a_client_sends_after_a_batch_waits_for_the_whole_batch(make_sup: Make) -> None:
    sup = make_sup()
    with SagaClient(sup.data_dir) as client:
        ids = client.spawn_many([S.InstantSaga() for _ in range(N - 1)] + [S.SleepSaga(60)])
        # sent at once after the batch: it must find the batch's last saga
        # started (taken before it, it would find nothing to cancel)
        assert client.cancel(ids[-1], "changed my mind") is True
        o = client.wait(ids[-1], 30)
        assert o.failed and o.reason == "cancelled: changed my mind", o
        assert all(client.wait(i, 30).completed for i in ids[:-1])


def test_a_stop_in_the_middle_of_a_batch_still_ends_every_saga_of_it(make_sup: Make) -> None:
    sup = make_sup()
    with SagaClient(sup.data_dir) as client:
        theirs = client.spawn_many([S.SleepSaga(60) for _ in range(N)])
    ours = sup.spawn_many([S.SleepSaga(60) for _ in range(N)])
    sup.stop()
    logged, _ = read_log(sup)
    ended = {i: logged[i]["state"] if i in logged else None for i in theirs + ours}
    assert {s for s in ended.values()} == {"failed"}, \
        sorted((i, s) for i, s in ended.items() if s != "failed")[:5]
    assert all(sup.wait(i).failed for i in ours[-10:] + theirs[-10:])


def test_a_batch_that_names_a_saga_twice_is_refused_whole(make_sup: Make) -> None:
    sup = make_sup()
    with SagaClient(sup.data_dir) as client:
        assert client.wait(client.spawn(S.InstantSaga()), 30).completed  # the class is in
        items = client.core.prepare([S.InstantSaga() for _ in range(3)], None)
        with pytest.raises(ValueError, match="appears twice in the batch"):
            client._call(lambda req: rq.SpawnBatch(req, items + items[:1], False))
        client.spawn(S.InstantSaga(), durable=True)  # logged after anything taken before
    logged, _ = read_log(sup)
    assert [it.saga_id for it in items if it.saga_id in logged] == []


def test_a_batch_too_large_for_one_frame_goes_in_parts_and_starts_whole(
        make_sup: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    # a client's frames are at most 16 MiB (about 150,000 small sagas): here
    # 64 KiB, so that a batch of N takes several parts
    monkeypatch.setattr(core_mod, "MAX_FRAME", 64 << 10)
    sup = make_sup()
    with SagaClient(sup.data_dir) as client:
        sent = record_requests(client.core)
        ids = client.spawn_many([S.InstantSaga() for _ in range(N)], durable=True)
        assert sent.count("SpawnBatch") > 2, sent
        logged, _ = read_log(sup)
        assert [i for i in ids if i not in logged] == []
        assert all(client.wait(i, 30).completed for i in ids)
    ours = sup.spawn_many([S.InstantSaga() for _ in range(N)])  # (the process engine's
    assert all(sup.wait(i, 30).completed for i in ours)          # facade is a client)


def test_sagas_whose_states_together_pass_a_frame_start_on_one_worker(make_sup: Make) -> None:
    """A turn's messages to a worker are one frame: twelve sagas of 2 MiB of
    state each (24 MiB) once killed the worker on a 16 MiB frame limit, and
    failed every one of them as 'worker crashed'."""
    sup = make_sup(workers=1)
    ids = sup.spawn_many([S.BulkySaga(2 << 20) for _ in range(12)])
    assert all(sup.wait(i, 60).completed for i in ids)
    assert sup.stats["worker_restarts"] == 0


def test_a_saga_too_large_for_a_spawn_is_refused_the_same_way_everywhere(
        make_sup: Make) -> None:
    """Over 16 MiB of state: a SpawnError at spawn() from the launcher (either
    engine) and from a client, instead of a worker that dies of its frame."""
    sup = make_sup()
    too_big = "^saga 'bulky': its state and input snapshot are 17,825,8.. bytes encoded, over"
    with SagaClient(sup.data_dir) as client:
        for spawn in (sup.spawn, lambda saga: sup.spawn_many([S.InstantSaga(), saga]),
                      client.spawn):
            with pytest.raises(SpawnError, match=too_big):
                spawn(S.BulkySaga(17 << 20))
    assert sup.in_flight() == 0 and sup.stats["worker_restarts"] == 0
    assert sup.wait(sup.spawn(S.BulkySaga(1 << 20)), 30).completed


def test_a_saga_that_cannot_be_encoded_late_in_a_batch_starts_none_of_it(
        make_sup: Make) -> None:
    sup = make_sup()
    before = set(read_log(sup)[0])
    with SagaClient(sup.data_dir) as client:
        sent = record_requests(client.core)
        batch = [S.InstantSaga() for _ in range(N)]
        batch[N - 10] = S.UnpicklableSaga()  # in the third part: two are sent already
        with pytest.raises(SpawnError, match="cannot be pickled"):
            client.spawn_many(batch)
        assert sent.count("SpawnBatch") == 3, sent  # two parts, then the abort
        ids = client.spawn_many([S.InstantSaga() for _ in range(N)], durable=True)
        assert all(client.wait(i, 30).completed for i in ids)
    with pytest.raises(SpawnError, match="cannot be pickled"):
        sup.spawn_many(batch)
    logged, _ = read_log(sup)
    assert set(logged) - before == set(ids)  # none of the two batches refused


def _send_parts(client: SagaClient, *parts: tuple[list[rq.SpawnItem], object, bool]
                ) -> Future:
    """A batch's parts, as a client sends them, each part's fields given
    (items, watch, more): the answer to the batch."""
    core, answer = client.core, Future()
    req = core.next_req()
    core.pending[req] = answer
    for items, watch, more in parts:
        core.send(rq.SpawnBatch(req, items, watch, more),  # type: ignore[arg-type]
                  spawned=tuple(it.saga_id for it in items))
    return answer


def test_a_batch_in_parts_is_refused_whole(make_sup: Make) -> None:
    sup = make_sup()
    with SagaClient(sup.data_dir) as client:
        assert client.wait(client.spawn(S.InstantSaga()), 30).completed  # the class is in
        twice = client.core.prepare([S.InstantSaga() for _ in range(6)], None)
        # a saga in two parts: seen once the batch is whole, and none starts
        answer = _send_parts(client, (twice[:3], False, True),
                             (twice[3:] + twice[:1], False, False))
        with pytest.raises(ValueError, match="appears twice in the batch"):
            answer.result(10)
        # a part refused on its way: the batch is refused once, its rest dropped
        broken = client.core.prepare([S.InstantSaga() for _ in range(6)], None)
        answer = _send_parts(client, (broken[:2], "yes", True), (broken[2:4], False, True),
                             (broken[4:], False, False))
        with pytest.raises(ValueError, match="watch has type str"):
            answer.result(10)
        # a part whose `more` is not a bool: refused, and the parts after it too
        odd = client.core.prepare([S.InstantSaga() for _ in range(4)], None)
        answer = _send_parts(client, (odd[:2], False, "yes"), (odd[2:], False, False))
        with pytest.raises(ValueError, match="more has type str"):
            answer.result(10)
        client.spawn(S.InstantSaga(), durable=True)  # logged after anything taken before
    logged, _ = read_log(sup)
    assert [it.saga_id for it in twice + broken + odd if it.saga_id in logged] == []


# -- the slices themselves, on the engine's core (no workers, no host) ---------------------


def test_a_spawn_many_is_taken_a_slice_a_turn_ahead_of_what_came_after_it(
        tmp_path: Path, shm_name: str) -> None:
    shared = SharedState.create(capacity=1 << 14, name=shm_name)
    parts = Parts(shared, tmp_path / "log.db")
    try:
        inbox = Inbox()
        core = parts.core
        requests = Requests(inbox, parts.sagas, core.keys, parts.recovery, parts.routing,
                            parts.turn, [], core.queues)
        spec = SagaSpec(1, (STATE_DICT, b""), "kind", 60.0, "{}", frozenset(), False)
        ids = [shared.acquire() for _ in range(5000)]
        done: list[int] = []
        inbox.post(SpawnMany(ids, [spec] * len(ids), 0, lambda: done.append(len(parts.table))))
        inbox.post(Stop(False, 0.0))
        seen, stopped = [], []
        for _ in range(3):
            stopped.append(requests.take(limit=2048) > 0.0)
            seen.append(len(parts.table))
            parts.end_turn()
        # the Stop waits behind the batch: taken in the turn of its last slice
        assert seen == [2048, 4096, 5000] and stopped == [False, False, True]
        assert done == [5000] and not inbox
        assert sorted(parts.table.live) == sorted(ids)
        logged, _ = read_log(tmp_path / "log.db")
        assert sorted(logged) == sorted(ids)
    finally:
        parts.close()
        shared.close()
