"""Shared fixtures: real segments that are always unlinked, and wait_for."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from supervisor import SharedState

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.005,
             what: str = "condition") -> T:
    """Poll `condition` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def shm_path(name: str) -> str:
    return "/dev/shm/" + name.lstrip("/")


@pytest.fixture
def shm_name() -> Iterator[str]:
    """A fresh segment name; whatever is left under it is removed after the test."""
    name = f"saga-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    SharedState.remove(name)


@pytest.fixture
def shared(shm_name: str) -> Iterator[SharedState]:
    state = SharedState.create(capacity=1024, name=shm_name)
    try:
        yield state
    finally:
        state.close()
        state.unlink()
