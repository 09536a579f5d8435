"""A testing kit for people who write sagas.

* :class:`Clock` — deadlines on a clock that moves only when the test
  advances it: ``Supervisor(..., clock=clock)``, then ``clock.advance(30)``
  and a 30-second timeout fires at once (and never before).  It drives saga
  and compensation timeouts, step deadlines (``step_timeout``), retry
  backoffs, queue timeouts and the restart backoff of workers and host;
  ``Clock(running=True)`` also moves with real time.
* :class:`FakeHost` — a host scripted in Python in the test (per-op answers,
  failures, delays, silence) that speaks the real host protocol in a real
  subprocess: ``Supervisor(..., host=fake.argv)``; ``fake.received()`` lists
  the commands it got.
* :func:`sagas_per_second` and :func:`raw_host_round_trips` — a perf gate for
  your own saga kind against the raw host pipe in the same run.
* The pytest plugin (:mod:`supervisor.testing.plugin`, registered through the
  ``pytest11`` entry point): fixtures ``saga_clock``, ``fake_host`` and
  ``saga_supervisor``.

See ``docs/testing.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Clock", "FakeHost", "answer", "fail", "silence", "sagas_per_second",
           "raw_host_round_trips"]


class Clock:
    """Monotonic seconds that move only when a test advances them (never
    back).  With ``running=True`` they also move with real time, so that a
    deadline the test never advances to still fires in real time."""

    def __init__(self, running: bool = False) -> None:
        self._base = time.monotonic()
        self._running = bool(running)
        self._offset = 0.0
        self._lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []

    @property
    def running(self) -> bool:
        return self._running

    def __call__(self) -> float:
        return (time.monotonic() if self._running else self._base) + self._offset

    def snapshot(self) -> tuple[float, bool, float]:
        """(base, running, offset): enough to make the same clock in another
        process of this machine (``time.monotonic`` is system-wide), as the
        supervisor process of ``engine="process"`` does."""
        with self._lock:
            return self._base, self._running, self._offset

    @classmethod
    def mirror(cls, base: float, running: bool, offset: float) -> Clock:
        """The clock another process's :meth:`snapshot` describes."""
        clock = cls(running)
        clock._base, clock._offset = base, offset
        return clock

    def set_offset(self, offset: float) -> None:
        """Move to `offset` (never back), as a mirrored clock follows its
        original's :meth:`advance`."""
        with self._lock:
            delta = offset - self._offset
        if delta > 0:
            self.advance(delta)

    def attach(self, wake: Callable[[], None]) -> None:
        """Called by a supervisor that runs on this clock: woken on advance."""
        with self._lock:
            self._wakers.append(wake)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`: deadlines that passed fire at once."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward, got {seconds!r}")
        with self._lock:
            self._offset += seconds
            wakers = list(self._wakers)
        for wake in wakers:
            wake()


def answer(kind: str = "echo", data: Any = None, after: float = 0.0) -> dict[str, Any]:
    """Answer a command with an event of `kind` (after `after` real seconds)."""
    return {"answer": kind, "data": data, "after": after}


def fail(reason: str, after: float = 0.0) -> dict[str, Any]:
    """Report the command's action failed with `reason`."""
    return {"fail": reason, "after": after}


def silence() -> dict[str, Any]:
    """Never answer (the saga waits for its timeout)."""
    return {"silence": True}


class FakeHost:
    """A host process scripted from the test.

    ``script`` maps a command's ``op`` to what the host does: one response
    (:func:`answer`, :func:`fail`, :func:`silence`) or a list of them, used in
    turn for the op's successive commands (the last one repeats). Ops not in
    the script are answered ``echo`` with the command's other fields as data.
    """

    def __init__(self, script: dict[str, Any] | None = None,
                 workdir: str | os.PathLike[str] | None = None) -> None:
        self._dir = Path(workdir) if workdir is not None else Path(
            tempfile.mkdtemp(prefix="saga-fakehost-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self.script_path = self._dir / "script.json"
        self.record_path = self._dir / "received.jsonl"
        self.script_path.write_text(json.dumps(
            {op: (r if isinstance(r, list) else [r]) for op, r in (script or {}).items()}))
        self.record_path.write_text("")

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "supervisor.testing._host", str(self.script_path),
                str(self.record_path)]

    def received(self) -> list[dict[str, Any]]:
        """Every command the host got so far: saga_id, step, attempt (the
        frame header's: 1, 2, ... for a retried step) and the command."""
        out = []
        for line in self.record_path.read_text().splitlines():
            out.append(json.loads(line))
        return out


def sagas_per_second(sup: Any, make: Callable[[int], Any], n: int) -> float:
    """Spawn ``make(i)`` for i in range(n) on a started supervisor and wait
    for all: sagas per second (each must complete)."""
    t = time.perf_counter()
    ids = [sup.spawn(make(i)) for i in range(n)]
    for sid in ids:
        o = sup.wait(sid, 120)
        if not o.completed:
            raise AssertionError(f"saga {sid} {o.state}: {o.reason}")
    return n / (time.perf_counter() - t)


def raw_host_round_trips(argv: list[str], n: int, command: bytes = b'{"op":"echo"}',
                         batch: int = 500) -> float:
    """Round trips per second of `n` commands written straight to a host's
    pipe in batches, with no supervisor: the ceiling a saga kind is held to."""
    from supervisor.frames import T_CMD, FrameReader, host_frame

    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        reader = FrameReader()
        got = 0
        t = time.perf_counter()
        for start in range(0, n, batch):
            end = min(start + batch, n)
            proc.stdin.write(b"".join(host_frame(T_CMD, i + 1, 1, command)
                                      for i in range(start, end)))
            while got < end:
                got += len(reader.feed(os.read(proc.stdout.fileno(), 1 << 20)))
        return n / (time.perf_counter() - t)
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()
