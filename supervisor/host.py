"""The reference host: ``python -m supervisor.host``.

Reads host-protocol frames (see :mod:`supervisor.frames` and
``docs/host-protocol.md``) on stdin, writes answers on stdout.  Commands are
JSON objects with an ``op``:

* ``{"op": "echo", ...}`` — answers at once, kind ``echo``, data = the other fields
* ``{"op": "sleep", "seconds": S}`` — kind ``echo`` after S seconds (overlapping)
* ``{"op": "fail", "reason": R}`` — reports the action failed (after
  ``seconds`` if given)
* ``{"op": "run", "argv": [...]}`` — starts a child: kind ``started`` (pid),
  later kind ``exited`` (pid, status)
* ``{"op": "stop", "pid": P}`` — SIGTERM to a child it started; kind ``echo``
* ``{"op": "publish", "kind": K, "data": D}`` — echo, plus an event addressed to
  no saga (a domain event for the supervisor's bus)

Fault-injection ops for tests (real faults of a real host process):
``garbage`` (a frame with a bad version, then the echo), ``unknown_saga`` (an
echo for a saga id that does not exist, then the real echo), ``oversize`` (a
frame header announcing 2 GiB: the stream cannot be resynchronised), ``die``
(exit at once with status 3), ``deep`` (JSON nested ``depth`` levels, sent ``as``
``event`` — a domain event —, ``failed`` — the reason of an action failure —
or ``echo`` — the answer itself; the first two are followed by the real echo),
``stray`` (a length prefix announcing a frame that never comes), ``flaky``
(``{"op": "flaky", "succeed_at": K, "how": "fail"|"hang"}``: attempts before
K fail, or get no answer at all; attempt K and later are echoed with data
``{"attempt": n}``; the attempt is the frame header's, so it keeps no state).

With ``SAGA_HOST_RECORD=PATH`` in its environment it appends one line per
command it receives (``saga_id step time``), for the soak's checks.

Every answer carries the command's saga id, step and attempt (version 2
frames).  Re-issued commands (same saga id and step, after a supervisor
restart or a retry) are answered again: this host keeps no state between
commands, which makes it idempotent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from supervisor.frames import (
    T_ACTION_FAILED,
    T_CMD,
    T_EVENT,
    FrameError,
    FrameReader,
    host_frame,
    parse_host_frame,
)


class ReferenceHost:
    def __init__(self, out_fd: int) -> None:
        self._out_fd = out_fd
        self._out = bytearray()
        self._flush_scheduled = False
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._loop = asyncio.get_running_loop()
        self.bad_frames = 0
        self._attempt = 0  # of the command being handled: its answers carry it
        # SAGA_HOST_RECORD=PATH: append "saga_id step time" per command (tests, soak)
        record = os.environ.get("SAGA_HOST_RECORD")
        self._record = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) \
            if record else -1

    # -- output -------------------------------------------------------------

    def _send(self, kind: int, saga_id: int, step: int, payload: dict[str, Any],
              attempt: int | None = None) -> None:
        self.raw(kind, saga_id, step, json.dumps(payload).encode(),
                 self._attempt if attempt is None else attempt)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = bytes(self._out)
        self._out.clear()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._out_fd, view)
            except BrokenPipeError:
                os._exit(0)  # the supervisor is gone: nothing left to answer
            view = view[n:]

    def raw(self, kind: int, saga_id: int, step: int, payload: bytes,
            attempt: int | None = None) -> None:
        """Queue one frame; it leaves at this turn of the event loop's end
        (every frame, so that the last answer of a burst is never left
        behind waiting for the next command's)."""
        self._out += host_frame(kind, saga_id, step, payload,
                                self._attempt if attempt is None else attempt)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def event(self, saga_id: int, step: int, kind: str, data: Any,
              attempt: int | None = None) -> None:
        self._send(T_EVENT, saga_id, step, {"kind": kind, "data": data}, attempt)

    def failed(self, saga_id: int, step: int, reason: str, attempt: int | None = None) -> None:
        self._send(T_ACTION_FAILED, saga_id, step, {"reason": reason}, attempt)

    # -- commands -----------------------------------------------------------

    def command(self, body: bytes) -> tuple[int, int, Any] | None:
        """A command frame's (saga id, step, command), or None for a bad frame;
        its attempt number is kept for the answers (``self._attempt``)."""
        try:
            kind, saga_id, step, attempt, payload = parse_host_frame(body)
            if kind != T_CMD:
                raise FrameError(f"host got frame type {kind}, expected a command", False)
            self._attempt = attempt
            return saga_id, step, json.loads(payload)
        except (FrameError, ValueError) as exc:
            self.bad_frames += 1
            print(f"{type(self).__name__}: bad frame: {exc}", file=sys.stderr)
            return None

    def handle(self, body: bytes) -> None:
        got = self.command(body)
        if got is None:
            return
        saga_id, step, cmd = got
        if self._record >= 0:
            os.write(self._record, f"{saga_id} {step} {time.time():.6f}\n".encode())
        if not isinstance(cmd, dict):
            self.failed(saga_id, step, f"command must be a JSON object, got {cmd!r}")
            return
        op = cmd.get("op")
        rest = {k: v for k, v in cmd.items() if k != "op"}
        if op == "echo":
            self.event(saga_id, step, "echo", rest)
        elif op == "sleep":
            seconds = cmd.get("seconds", 0)
            if not isinstance(seconds, (int, float)) or seconds < 0:
                self.failed(saga_id, step, f"sleep needs seconds >= 0, got {seconds!r}")
                return
            self._loop.call_later(seconds, self.event, saga_id, step, "echo", rest,
                                  self._attempt)
        elif op == "fail":
            reason = str(cmd.get("reason", "failed on request"))
            delay = cmd.get("seconds", 0)
            if isinstance(delay, (int, float)) and delay > 0:
                self._loop.call_later(delay, self.failed, saga_id, step, reason,
                                      self._attempt)
            else:
                self.failed(saga_id, step, reason)
        elif op == "run":
            self._loop.create_task(self._run(saga_id, step, cmd.get("argv"), self._attempt))
        elif op == "stop":
            self._stop(saga_id, step, cmd.get("pid"))
        elif op == "publish":
            self.event(0, 0, str(cmd.get("kind", "published")), cmd.get("data"))
            self.event(saga_id, step, "echo", rest)
        elif op == "garbage":
            self._out += b"\x00\x00\x00\x05\x09garb"  # well-framed, bad version
            self.event(saga_id, step, "echo", rest)
        elif op == "unknown_saga":
            self.event(saga_id + 1_000_000_000, step, "echo", rest)
            self.event(saga_id, step, "echo", rest)
        elif op == "oversize":
            self._out += b"\x7f\xff\xff\xff"  # a length no reader accepts: stream lost
            self._flush()
        elif op == "deep":
            depth = cmd.get("depth", 100_000)
            nest = b"[" * depth + b"]" * depth
            how = cmd.get("as", "event")
            if how == "event":
                self.raw(T_EVENT, 0, 0, b'{"kind":"deep","data":' + nest + b"}")
            elif how == "failed":
                self.raw(T_ACTION_FAILED, saga_id, step, b'{"reason":' + nest + b"}")
                return
            elif how == "echo":
                self.raw(T_EVENT, saga_id, step, b'{"kind":"echo","data":' + nest + b"}")
                return
            self.event(saga_id, step, "echo", rest)
        elif op == "stray":  # with "once": PATH, only while PATH does not exist yet
            once = cmd.get("once")
            if isinstance(once, str) and os.path.exists(once):
                self.event(saga_id, step, "echo", rest)
                return
            if isinstance(once, str):
                open(once, "w").close()
            self._out += b"\x00\x00\x10\x00"  # announces 4 KiB that never come
            self._flush()
        elif op == "flaky":
            self._flaky(saga_id, step, cmd)
        elif op == "die":
            self._flush()
            os._exit(3)
        else:
            self.failed(saga_id, step, f"unknown op {op!r}")

    def _flaky(self, saga_id: int, step: int, cmd: dict[str, Any]) -> None:
        attempt = max(1, self._attempt)  # a version-1 command is attempt 1
        succeed_at = cmd.get("succeed_at", 2)
        if not isinstance(succeed_at, int) or succeed_at < 1:
            self.failed(saga_id, step, f"flaky needs succeed_at >= 1, got {succeed_at!r}")
        elif attempt >= succeed_at:
            self.event(saga_id, step, "echo", {"attempt": attempt})
        elif cmd.get("how", "fail") == "fail":
            self.failed(saga_id, step, f"flaky: attempt {attempt} fails (succeeds at "
                        f"{succeed_at})")
        # how == "hang": no answer at all (a step deadline must notice)

    async def _run(self, saga_id: int, step: int, argv: Any, attempt: int) -> None:
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            self.failed(saga_id, step, f"run needs a non-empty argv list of str, got {argv!r}",
                        attempt)
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            self.failed(saga_id, step, f"cannot start {argv[0]!r}: {exc}", attempt)
            return
        self._children[proc.pid] = proc
        self.event(saga_id, step, "started", {"pid": proc.pid}, attempt)
        status = await proc.wait()
        self._children.pop(proc.pid, None)
        self.event(saga_id, step, "exited", {"pid": proc.pid, "status": status}, attempt)

    def _stop(self, saga_id: int, step: int, pid: Any) -> None:
        proc = self._children.get(pid) if isinstance(pid, int) else None
        if proc is None:
            self.failed(saga_id, step, f"no child with pid {pid!r} was started by this host")
            return
        proc.send_signal(signal.SIGTERM)
        self.event(saga_id, step, "echo", {"pid": pid, "signal": "SIGTERM"})

    async def close(self) -> None:
        """Kill the children still running and reap them while the event
        loop runs (reaped after it closed, asyncio warns of each on stderr)."""
        procs = list(self._children.values())
        for proc in procs:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        if procs:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=5.0)


async def _main(in_fd: int, out_fd: int,
                make: Callable[[int], ReferenceHost] | None = None) -> int:
    """Serve the host protocol on (in_fd, out_fd) until EOF or a signal;
    `make(out_fd)` builds the host (the reference host; the testing kit's
    scripted host)."""
    loop = asyncio.get_running_loop()
    host = (make or ReferenceHost)(out_fd)
    reader = FrameReader()
    done = loop.create_future()

    class _Proto(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            try:
                bodies = reader.feed(data)
            except FrameError as exc:
                print(f"reference host: {exc}; closing", file=sys.stderr)
                if not done.done():
                    done.set_result(2)
                return
            for body in bodies:
                host.handle(body)

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(0)

    stdin = os.fdopen(in_fd, "rb", buffering=0, closefd=False)
    transport, _ = await loop.connect_read_pipe(_Proto, stdin)
    def _on_signal() -> None:
        if not done.done():
            done.set_result(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal)
    try:
        return int(await done)
    finally:
        transport.close()
        await host.close()


def main() -> None:
    sys.exit(asyncio.run(_main(sys.stdin.fileno(), sys.stdout.fileno())))


if __name__ == "__main__":
    main()
