"""Processes for the two-process benchmarks (importable under spawn)."""

from __future__ import annotations

from typing import Any

from supervisor import SharedState


def hammer_ours(name: str, conn: Any) -> None:
    state = SharedState.attach(name)
    next_id = state.next_id
    while True:
        n = conn.recv()
        if n is None:
            break
        for _ in range(n):
            next_id()
        conn.send(True)
    state.close()


def hammer_claim(name: str, conn: Any) -> None:
    state = SharedState.attach(name)
    claim = state.claim
    while True:
        msg = conn.recv()
        if msg is None:
            break
        first, n = msg
        for i in range(first, first + n):
            claim(i)
        conn.send(True)
    state.close()


def hammer_locked(value: Any, conn: Any) -> None:
    lock = value.get_lock()
    while True:
        n = conn.recv()
        if n is None:
            break
        for _ in range(n):
            with lock:
                value.value += 1
        conn.send(True)
