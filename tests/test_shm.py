"""The shared-memory hot path, with real processes racing on a real segment."""

from __future__ import annotations

import array
import os
import signal
from pathlib import Path

import multiprocess as mp
import pytest

from supervisor import (
    CapacityError,
    IdOverflowError,
    LayoutMismatchError,
    SegmentClosedError,
    SegmentExistsError,
    SegmentNotFoundError,
    SharedState,
    SupervisorError,
)
from supervisor.shmem import state as shm_mod

from . import _shm_procs
from .conftest import shm_path, wait_for

CTX = mp.get_context("spawn")


def test_c_side_reports_real_values(shared: SharedState) -> None:
    assert shm_mod._lib.ssm_magic() == 0x314D48534147415B
    assert shm_mod.LAYOUT_VERSION == 2  # 2: the ids' fence
    assert shm_mod.MAX_ID == 2**62 - 1
    assert shm_mod._lib.ssm_header_size() == 256
    assert os.path.getsize(shm_path(shared.name)) == 256 + 8 * shared.capacity
    assert shared.creator_pid == os.getpid()
    assert shared.creator_alive()


def test_no_id_passes_the_fence_until_it_rises(shm_name: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The fence that keeps the log's high-water mark ahead of every id
    handed out: next_id, reserve_ids and acquire wait at it, a raise lets
    them through, it never goes down, and a fence never raised is an
    IdFenceError naming it."""
    import threading

    import supervisor.shmem.binding as shmlib
    from supervisor import IdFenceError

    monkeypatch.setattr(shmlib, "FENCE_WAIT", 0.3)
    with SharedState.create(capacity=64, name=shm_name, first_id=10, id_limit=12) as s:
        other = SharedState.attach(shm_name)
        assert s.id_limit == 12 and s.next_id() == 10 and other.acquire() == 11
        with pytest.raises(IdFenceError, match="fence"):
            other.next_id()
        with pytest.raises(IdFenceError):
            s.reserve_ids(2)
        with pytest.raises(IdFenceError):
            s.acquire()
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(other.acquire()))
        t.start()
        assert s.raise_id_limit(1000) == 1000 and s.raise_id_limit(20) == 1000  # never down
        t.join(10)
        assert got and 12 <= got[0] < 1000  # ids burned at the fence are skipped, not reused
        assert s.reserve_ids(3)[0] > got[0]
        other.close()
    with SharedState.create(capacity=64, name=shm_name + "x") as free:  # no fence
        assert free.id_limit == shm_mod.MAX_ID + 1 and free.reserve_ids(5) == range(1, 6)
        free.unlink()


def test_ids_start_at_first_id_and_increase(shm_name: str) -> None:
    with SharedState.create(capacity=64, name=shm_name, first_id=1000) as s:
        assert s.next_id() == 1000
        assert s.reserve_ids(3) == range(1001, 1004)
        assert s.next_id() == 1004
        assert s.peek_next_id() == 1005
    assert not os.path.exists(shm_path(shm_name))


def test_overflow_is_an_error_never_a_wrap(shm_name: str) -> None:
    top = shm_mod.MAX_ID
    with SharedState.create(capacity=64, name=shm_name, first_id=top - 2) as s:
        with pytest.raises(IdOverflowError):
            s.reserve_ids(4)  # refused without moving the counter
        assert s.reserve_ids(2) == range(top - 2, top)
        assert s.next_id() == top
        with pytest.raises(IdOverflowError):
            s.next_id()
        with pytest.raises(IdOverflowError):
            s.next_id()
        with pytest.raises(IdOverflowError):
            s.acquire()


def test_bad_arguments_name_the_value(shared: SharedState) -> None:
    with pytest.raises(TypeError, match="'7'"):
        shared.claim("7")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        shared.register(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="-3"):
        shared.claim(-3)
    with pytest.raises(ValueError, match="got 0"):
        shared.register(0)
    with pytest.raises(ValueError, match="never allocated"):
        shared.claim(10**6)
    with pytest.raises(ValueError, match="never allocated"):
        shared.register(10**6)
    with pytest.raises(ValueError, match="n must be between"):
        shared.reserve_ids(0)
    with pytest.raises(TypeError, match="n must be an int"):
        shared.reserve_ids("3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="power of two"):
        SharedState.create(capacity=1000)
    with pytest.raises(ValueError, match="invalid segment name"):
        SharedState.attach("a/b")
    with pytest.raises(TypeError):
        SharedState()


def test_register_claim_and_in_flight(shared: SharedState) -> None:
    a, b = shared.reserve_ids(2)
    shared.register(a)
    shared.register(b)
    assert shared.in_flight() == 2
    assert shared.state(a) == "live" and not shared.is_claimed(a)
    with pytest.raises(ValueError, match="already registered"):
        shared.register(a)
    assert shared.claim(a) is True
    assert shared.claim(a) is False
    assert shared.state(a) == "claimed" and shared.is_claimed(a)
    assert shared.in_flight() == 1
    c = shared.acquire()
    assert c > b and shared.state(c) == "live" and shared.in_flight() == 2


def test_live_slot_is_never_overwritten(shm_name: str) -> None:
    with SharedState.create(capacity=4, name=shm_name) as s:
        old = s.acquire()  # id 1 -> slot 1
        for _ in range(3):
            s.claim(s.acquire())
        newer = s.next_id()  # 5: same slot as 1
        assert newer % 4 == old % 4
        with pytest.raises(CapacityError, match="held by a live saga"):
            s.register(newer)
        assert s.state(old) == "live"
        # acquire() skips ids whose slot is live instead of failing
        got = s.acquire()
        assert got % 4 != old % 4 and s.state(old) == "live"


def test_a_foreign_id_is_put_in_flight_in_any_free_or_claimed_slot(shm_name: str) -> None:
    """A saga taken over from another fleet node keeps its id, from a range
    this segment never allocated (above or below its counter)."""
    with SharedState.create(capacity=4, name=shm_name, first_id=1 << 40) as s:
        high, low = (2 << 40) + 1, 5  # another node's ids: above and below ours
        with pytest.raises(ValueError, match="never allocated"):
            s.register(high)
        s.register(high, foreign=True)
        assert s.state(high) == "live" and s.in_flight() == 1
        with pytest.raises(CapacityError, match="held by a live saga"):
            s.register(high + 4, foreign=True)  # its slot is live: never overwritten
        assert s.claim(high) and not s.claim(high)
        s.register(high + 4, foreign=True)  # a claimed slot is reused, whatever its id
        assert s.claim(high + 4)
        s.register(low + 4 * 9, foreign=True)  # older than what held the slot: still fine
        assert s.state(high + 4) == "unknown" and s.claim(low + 36)
        ids = []
        for _ in range(8):  # our own ids go on (skipping a slot a higher id held)
            ids.append(s.acquire())
            assert s.claim(ids[-1])
        assert len(set(ids)) == 8 and all(i >> 40 == 1 for i in ids) and s.in_flight() == 0


def test_acquire_applies_backpressure_when_full(shm_name: str) -> None:
    with SharedState.create(capacity=8, name=shm_name) as s:
        ids = [s.acquire() for _ in range(8)]
        assert s.in_flight() == 8
        with pytest.raises(CapacityError, match="full"):
            s.acquire()
        assert all(s.state(i) == "live" for i in ids)
        assert s.claim(ids[3])
        assert s.acquire() > ids[-1]


def test_stale_claim_after_slot_reuse_loses(shm_name: str) -> None:
    with SharedState.create(capacity=4, name=shm_name) as s:
        old = s.acquire()
        assert s.claim(old)
        s.reserve_ids(3)
        new = s.next_id()
        assert new % 4 == old % 4
        s.register(new)  # the claimed slot is reused by the newer id
        assert s.state(old) == "unknown"
        assert s.claim(old) is False  # late claim for the old id: loses
        assert s.state(new) == "live" and s.in_flight() == 1  # new owner undisturbed
        with pytest.raises(ValueError, match="stale"):
            s.register(old)
        assert s.claim(new) is True


def test_missing_segment(shm_name: str) -> None:
    with pytest.raises(SegmentNotFoundError, match=shm_name):
        SharedState.attach(shm_name)


def test_name_taken(shared: SharedState) -> None:
    with pytest.raises(SegmentExistsError):
        SharedState.create(capacity=8, name=shared.name)


def test_corrupt_header(shm_name: str) -> None:
    path = Path(shm_path(shm_name))
    path.write_bytes(b"NOTASAGA" + b"\x07" * (256 + 8 * 16 - 8))
    with pytest.raises(LayoutMismatchError, match="magic"):
        SharedState.attach(shm_name)
    path.write_bytes(b"\x00" * 300)
    with pytest.raises(LayoutMismatchError, match="never initialised"):
        SharedState.attach(shm_name, timeout=0.05)
    path.write_bytes(b"short")
    with pytest.raises(LayoutMismatchError, match="size"):
        SharedState.attach(shm_name)


def test_wrong_version_and_truncation(shm_name: str) -> None:
    s = SharedState.create(capacity=16, name=shm_name)
    s.close()
    path = Path(shm_path(shm_name))
    good = path.read_bytes()
    path.write_bytes(good[:8] + (99).to_bytes(4, "little") + good[12:])
    with pytest.raises(LayoutMismatchError, match="version"):
        SharedState.attach(shm_name)
    path.write_bytes(good[:-8])
    with pytest.raises(LayoutMismatchError, match="size"):
        SharedState.attach(shm_name)
    s.unlink()


def test_other_capacity(shared: SharedState) -> None:
    with pytest.raises(LayoutMismatchError, match="capacity is 1024, expected 2048"):
        SharedState.attach(shared.name, capacity=2048)
    other = SharedState.attach(shared.name, capacity=1024)
    assert other.capacity == 1024
    other.close()


def test_closed_handle_raises(shared: SharedState) -> None:
    other = SharedState.attach(shared.name)
    other.close()
    other.close()
    for call in (other.next_id, other.in_flight, lambda: other.claim(1),
                 lambda: other.reserve_ids(2), other.acquire, lambda: other.register(1)):
        with pytest.raises(SegmentClosedError):
            call()
    assert shared.next_id() == 1  # the creator's handle is unaffected
    with pytest.raises(SupervisorError, match="only the creator"):
        SharedState.attach(shared.name).unlink()


def test_only_the_creator_unlinks(shared: SharedState) -> None:
    p = CTX.Process(target=_shm_procs.attach_and_exit, args=(shared.name,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert os.path.exists(shm_path(shared.name))
    assert shared.next_id() == 2  # the child's id was 1


def test_id_uniqueness_across_processes(shared: SharedState, tmp_path: Path) -> None:
    per_proc = 200_000
    outs = [tmp_path / f"ids{i}" for i in range(4)]
    procs = [CTX.Process(target=_shm_procs.allocate_ids,
                         args=(shared.name, per_proc, i, str(outs[i]))) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    seen: set[int] = set()
    for out in outs:
        ids = array.array("Q")
        ids.frombytes(out.read_bytes())
        assert len(ids) == per_proc
        assert all(a < b for a, b in zip(ids, ids[1:])), "ids not strictly increasing"
        seen.update(ids)
    assert len(seen) == 4 * per_proc, "duplicate ids across processes"
    assert shared.peek_next_id() == 4 * per_proc + 1  # no id lost either


def test_exactly_once_claim_race(shm_name: str) -> None:
    n, rounds, racers = 100_000, 15, 3
    with SharedState.create(capacity=131072, name=shm_name) as s:
        pipes = [CTX.Pipe() for _ in range(racers)]
        procs = [CTX.Process(target=_shm_procs.claim_rounds, args=(shm_name, child, i))
                 for i, (_, child) in enumerate(pipes)]
        for p in procs:
            p.start()
        try:
            for _ in range(rounds):
                ids = s.reserve_ids(n)
                for i in ids:
                    s.register(i)
                assert s.in_flight() == n
                for parent, _ in pipes:
                    parent.send((ids.start, n))
                wins = [parent.recv_bytes() for parent, _ in pipes]
                totals = [sum(col) for col in zip(*wins)]
                assert totals == [1] * n, "an id was claimed by zero or several racers"
                assert s.in_flight() == 0
                assert all(s.claim(i) is False for i in ids[:1000])
        finally:
            for parent, _ in pipes:
                parent.send(None)
            for p in procs:
                p.join(30)
                if p.exitcode is None:
                    p.kill()
        assert [p.exitcode for p in procs] == [0] * racers


def test_sigkill_while_attached_leaves_segment_usable(shared: SharedState) -> None:
    parent, child = CTX.Pipe()
    victim = CTX.Process(target=_shm_procs.attach_and_hold, args=(shared.name, child))
    victim.start()
    got = parent.recv()
    assert got == list(range(1, 11))
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(30)
    assert victim.exitcode == -signal.SIGKILL
    assert os.path.exists(shm_path(shared.name))
    assert shared.next_id() == 11
    survivor = CTX.Process(target=_shm_procs.attach_and_exit, args=(shared.name,))
    survivor.start()
    survivor.join(30)
    assert survivor.exitcode == 0
    assert shared.next_id() == 13
    wait_for(lambda: os.path.exists(shm_path(shared.name)), what="segment still present")


def test_creator_exit_without_unlink_cleans_up(shm_name: str) -> None:
    code = (
        "from supervisor import SharedState\n"
        f"s = SharedState.create(capacity=8, name={shm_name!r})\n"
        "s.next_id()\n"
    )
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert not os.path.exists(shm_path(shm_name))


def test_pickle_attaches_by_name(shared: SharedState) -> None:
    import pickle

    other = pickle.loads(pickle.dumps(shared))
    assert other.name == shared.name and not other.is_creator
    assert other.next_id() == 1
    other.close()
