"""Fuzzing the two doors a hostile peer can knock on: the host stream and the
control socket (hypothesis).  The engine's parts run in process against a
real segment and a real log (tests/_parts.py); the control server reads from
a real socket pair.  Invariant: nothing escapes the loop's boundaries, the
engine keeps serving, and every saga resolves.

A few thousand cases run by default; the soak runs more
(``SAGA_FUZZ_CASES=100000 pytest tests/test_fuzz.py``, or
``python -m tests.soak --fuzz-cases 100000``)."""

from __future__ import annotations

import json
import os
import pickle
import secrets
import selectors
import shutil
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor import SharedState
from supervisor.wire.codec import ClassRegistry
from supervisor._engine.control import Conn, ControlServer
from supervisor._engine.exits import Exits
from supervisor.frames import (
    MAX_FRAME,
    T_ACTION_FAILED,
    T_CMD,
    T_EVENT,
    FrameError,
    FrameReader,
    frame,
)
from supervisor.paths import DataDir
from supervisor.protocol import Act, Op

from ._parts import Parts, answer

CASES = int(os.environ.get("SAGA_FUZZ_CASES", "1000"))
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=CASES <= 5000,
                suppress_health_check=list(HealthCheck))
# seconds for a whole run: the suite's 180 s per test is for 1,000 cases
pytestmark = pytest.mark.timeout(int(120 + CASES * 0.02))

class _Fuzz:
    """The engine's parts and a control server over a socket pair, made once
    per module (a fixture: a run that deselects these tests creates nothing)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="saga-fuzz-"))
        self.shared = SharedState.create(capacity=1 << 16, name=f"saga-fuzz-{os.getpid()}-"
                                         f"{secrets.token_hex(4)}")
        self.parts = Parts(self.shared, self.dir / "sagas.db")
        self.sel = selectors.DefaultSelector()
        p = self.parts
        self.server = ControlServer(DataDir(self.dir / "ctl"), self.sel, p.life, self.shared,
                                    p.table, Exits(), ClassRegistry(), p.sagas, p.turn,
                                    lambda sid: None)
        self.new_conn()

    def new_conn(self) -> None:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.settimeout(5)
        self.client = b
        self.conn = Conn(a)
        self.server.conns.append(self.conn)
        self.sel.register(a, selectors.EVENT_READ, None)

    def close(self) -> None:
        self.server.close()
        self.client.close()
        self.sel.close()
        self.parts.close()
        self.shared.close()
        self.shared.unlink()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def fuzz() -> Iterator[_Fuzz]:
    f = _Fuzz()
    try:
        yield f
    finally:
        f.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12)

payloads = st.one_of(
    json_values.map(lambda v: json.dumps({"kind": "echo", "data": v}).encode()),
    json_values.map(lambda v: json.dumps({"reason": v}).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.integers(1, 200_000).map(lambda d: b'{"kind":"x","data":' + b"[" * d + b"]" * d + b"}"),
)


@st.composite
def host_chunks(draw: Any, live: list[tuple[int, int]]) -> list[bytes]:
    """Bytes a broken or hostile host could write: well-framed frames with any
    header fields and payloads, truncated ones, and raw junk.  Sagas in flight
    are drawn by position, not id (ids change from case to case)."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["frame", "frame", "frame", "junk", "truncated"]))
        if kind == "junk":
            out.append(draw(st.binary(min_size=1, max_size=32)))
            continue
        pick = draw(st.integers(0, len(live) + 1))
        sid_step = (live + [(0, 0), (10**9, 1)])[pick] if draw(st.booleans()) else \
            draw(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)))
        body = struct.pack(">BBQI", draw(st.sampled_from([1, 1, 1, 0, 2, 255])),
                           draw(st.sampled_from([T_EVENT, T_ACTION_FAILED, T_CMD, 0, 9])),
                           *sid_step) + draw(payloads)
        data = frame(body)
        if kind == "truncated":
            data = data[:draw(st.integers(0, len(data) - 1))]
        out.append(data)
    return out


def _finish(p: Parts, sagas: list[Any]) -> None:
    """Answer every saga still waiting, let its worker say Done: all resolve."""
    p.end_turn()
    for s in sagas:
        if s.saga_id in p.table.live and s.open_step:
            p.routing.host_frame(p.host, answer(s.saga_id, s.open_step))
            # what a worker does on Done: win the claim, then report
            if p.shared.claim(s.saga_id):
                p.routing.worker_replies([(Op.ACT, s.saga_id, Act.DONE, None,
                                           '{"kind":"echo"}')])
        elif s.saga_id in p.table.live:
            p.sagas.cancel(s.saga_id, "fuzz cleanup")
    p.end_turn()
    assert not any(s.saga_id in p.table.live for s in sagas)
    assert p.shared.in_flight() == len(p.table)  # no slot held by a saga that ended


@FUZZ
@given(data=st.data())
def test_host_stream_fuzz(fuzz: _Fuzz, data: Any) -> None:
    p = fuzz.parts
    sagas = [p.spawn() for _ in range(3)]
    for s in sagas:
        p.issue(s, {"op": "echo"})
    p.end_turn()
    live = [(s.saga_id, 1) for s in sagas]
    reader = FrameReader()
    for chunk in data.draw(host_chunks(live)):
        try:
            bodies = reader.feed(chunk)
        except FrameError:  # the stream is lost: the host is restarted (re-issue)
            p.routing.host_lost("host pipe broken (fuzz)", restarted=True)
            reader = FrameReader()
            continue
        for body in bodies:
            p.routing.host_frame(p.host, body)  # must never raise
        p.routing.worker_replies([])
    _finish(p, sagas)


requests = st.tuples(
    st.sampled_from(["cls", "spawn", "cancel", "wait", "publish", "subscribe", "bogus", ""]),
    st.integers(-5, 2**70) | st.none(),
).flatmap(lambda head: st.lists(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) |
    st.floats() | st.text(max_size=10) | st.binary(max_size=20) |
    st.tuples(st.integers(-2, 3), st.binary(max_size=8)) | st.lists(st.text(max_size=4)),
    max_size=9).map(lambda rest: head + tuple(rest)))


@FUZZ
@given(msgs=st.lists(requests | st.binary(min_size=1, max_size=40), min_size=1, max_size=5))
def test_control_request_fuzz(fuzz: _Fuzz, msgs: list[Any]) -> None:
    s = fuzz
    s.server.close_conn(s.conn)  # each case on a connection of its own
    s.client.close()
    s.new_conn()
    for m in msgs:
        data = frame(pickle.dumps(m)) if isinstance(m, tuple) else m
        try:
            s.client.sendall(data)
        except OSError:  # the server dropped this peer (allowed): go on with another
            s.new_conn()
            continue
        s.server._read(s.conn)  # must never raise
        if s.conn.closed:
            s.client.close()
            s.new_conn()
    s.server.flush(s.conn)
    # the server still serves (a new connection: this one may hold half a
    # frame of junk): a saga in flight can be cancelled through it
    s.server.close_conn(s.conn)
    s.client.close()
    s.new_conn()
    saga = fuzz.parts.spawn()
    s.client.sendall(frame(pickle.dumps(("cancel", 7, saga.saga_id, "fuzz"))))
    s.server._read(s.conn)
    s.server.flush(s.conn)
    reader = FrameReader(max_frame=MAX_FRAME)
    replies: list[Any] = []
    while not any(r[0] == "ok" and r[1] == 7 for r in replies):
        replies += [pickle.loads(b) for b in reader.feed(s.client.recv(1 << 20))]
    assert ("ok", 7, True) in replies
    fuzz.parts.end_turn()
    assert saga.saga_id not in fuzz.parts.table.live
    assert fuzz.shared.in_flight() == len(fuzz.parts.table)


def _outcome(f: Any, data: Any) -> tuple[str, Any]:
    try:
        return "value", f(data)
    except Exception as exc:  # the same exception type, whichever decoder
        return "error", type(exc).__name__


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(value=_json_values, before=st.sampled_from(["", " ", "\n", "\ufeff"]),
       after=st.sampled_from(["", " ", "x", "}", "\n", "1"]),
       as_bytes=st.sampled_from([None, bytes, bytearray]),
       encoding=st.sampled_from(["utf-8", "utf-16"]))
def test_the_fast_json_decoder_answers_what_json_loads_answers(
        value: Any, before: str, after: str, as_bytes: Any, encoding: str) -> None:
    """The workers decode every host answer with jsontext.loads, json's C
    scanner called directly: on any text, or its bytes in any encoding
    json.loads takes, it returns what json.loads returns or raises the same
    error type (so a saga sees the same event or the same 'undecodable')."""
    from supervisor.common.jsontext import loads

    text = before + json.dumps(value) + after
    data: Any = as_bytes(text.encode(encoding)) if as_bytes else text
    assert _outcome(loads, data) == _outcome(json.loads, data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_the_fast_json_decoder_on_arbitrary_bytes(data: bytes) -> None:
    from supervisor.common.jsontext import loads

    assert _outcome(loads, data) == _outcome(json.loads, data)


def test_the_fast_json_decoder_on_what_nests_too_deep() -> None:
    from supervisor.common.jsontext import loads

    deep = b"[" * 100_000 + b"]" * 100_000
    assert _outcome(loads, deep) == _outcome(json.loads, deep) == ("error", "RecursionError")
