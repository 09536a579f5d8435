"""The behaviour suite's parameters: a module whose every make_sup() test
must run on both engines, or on both stores, says so with

    sup_engine = _suite.both_engines
    sup_store = _suite.both_stores

(each is a fixture under the name make_sup() asks for: overriding it in the
module parametrizes the module's tests, and only those that build a
supervisor)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["thread", "process"], name="sup_engine")
def both_engines(request: pytest.FixtureRequest) -> str:
    """The supervisor as a thread of the test, and in a process of its own."""
    return str(request.param)


@pytest.fixture(params=["sqlite", "postgres"], name="sup_store")
def both_stores(request: pytest.FixtureRequest) -> str:
    """The embedded SQLite file, and a real PostgreSQL server (see tests/_pg.py)."""
    return str(request.param)
