"""The supervisor process of ``Supervisor(..., engine="process")``:
``python -m supervisor.facade.serve`` (started by the launcher's
:class:`~supervisor.facade.process_link.ProcessLink`, never by hand).  It
runs the engine as a thread of its own (a
:class:`~supervisor.facade.thread_link.ThreadLink`), from the settings the
launcher checked.

Protocol with the launcher, over the child's stdin and stdout:

* stdin, first: a u32 big-endian length and a dill blob: the data dir, the
  checked settings, the registrations made before ``start()``, and how many
  subscriptions the launcher made before it (their events are held here
  from the start until it connects them: :mod:`.early_subs`);
* stdout: one line, ``ready <json: shm segment, metrics address>`` or
  ``error <what went wrong>``;
* stdin, then: a ``stop <drain 0|1> <timeout> <suspend 0|1>`` line stops it
  (the launcher's ``stop()``); EOF means the launcher is gone (exited or
  killed): with ``orphan="stop"`` (default) it stops at once, failing what
  is in flight ("supervisor stopped"); with ``orphan="suspend"`` it stops at
  once leaving what is in flight in the log for the next start to resume;
  with ``orphan="serve"`` it keeps serving other clients (SagaClient) until
  SIGTERM or SIGINT.
* stdout, last: ``stopped`` (or ``crashed <error>`` when the supervisor
  stopped on its own: restart intensity, the log).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill

from supervisor.facade.early_subs import HOLD_FOR, HeldSubscriptions
from supervisor.facade.thread_link import ThreadLink
from supervisor.paths import DataDir

log = logging.getLogger("supervisor.serve")


def _say(line: str) -> None:
    try:
        sys.stdout.write(line.replace("\n", " ") + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):  # the launcher is gone: nobody reads it
        pass


def _say_final(sup: ThreadLink) -> None:
    """Our health report after the stop: the launcher's health() and stats
    answer with it once this process is gone."""
    try:
        report = json.dumps(sup.health())
    except Exception as exc:  # (no report is worth a failed stop)
        log.warning("no final health report for the launcher: %s", exc)
        return
    _say("final " + report)
    if sup.core.settings.metrics_port is not None:
        _say("final_metrics " + json.dumps(sup.metrics()))


def _build(cfg: dict[str, Any]) -> ThreadLink:
    settings = cfg["settings"]
    if cfg.get("clock") is not None:  # the launcher's test clock, mirrored here
        from supervisor.testing import Clock

        settings = dataclasses.replace(settings, clock=Clock.mirror(*cfg["clock"]))
    link = ThreadLink(DataDir(Path(cfg["data_dir"])), settings)
    for reg in cfg["registered"]:
        link.register(reg)
    return link


Command = tuple[str, bool, float, bool]  # (what, drain, timeout, suspend)


def _lines(fd: int) -> Iterator[bytes]:
    """Lines read from `fd` with os.read, until EOF.  Not sys.stdin: a daemon
    thread blocked in a buffered read holds its lock, and the interpreter
    aborts at exit when it cannot take it ("could not acquire lock")."""
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line


def _read_exactly(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _watch_launcher(commands: list[Command], wake: threading.Event) -> None:
    """Read the launcher's commands until EOF (it exited or was killed)."""
    for raw in _lines(0):
        parts = raw.decode("utf-8", "replace").split()
        if len(parts) in (3, 4) and parts[0] == "stop":
            commands.append(("stop", parts[1] == "1", float(parts[2]),
                             parts[3:] == ["1"]))
            wake.set()
            return
    commands.append(("orphaned", False, 0.0, False))
    wake.set()


def _take_what_was_sent(sup: ThreadLink, limit: float = 2.0) -> None:
    """Before stopping for a dead launcher, let the loop read what it sent
    on the control socket (pipelined spawns it already has ids for): its
    connection closes once all of that was read.  Other clients' connections
    stay open, so this waits at most `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and sup.state == "running":
        if not sup.health().get("control", {}).get("clients"):
            return
        time.sleep(0.01)


def _collect_less() -> None:
    """This interpreter is ours, and the engine makes no reference cycles per
    saga: what start-up imported is frozen out of every collection, and the
    youngest generation is collected every 10,000 allocations instead of 700,
    so that a saga's records die young instead of being promoted and walked
    again by every full collection (in a thread engine's launcher with 250,000
    sagas spawned at once, full collections took 1.7 s of CPU in an 8.6 s
    run).  Cycles that user code makes (a trigger, a local handler) are still
    collected."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # (born blocked)
    # this interpreter is ours: its loop, log writer and control threads hand
    # the GIL to each other many times a saga, and a thread woken by the
    # network (a commit's answer) would otherwise wait up to the 5 ms default
    # for it (latency at 1,000 sagas/s on PostgreSQL: p50 12.6 -> 6.4 ms)
    sys.setswitchinterval(0.0005)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s supervisor[%(process)d] "
                        "%(levelname)s %(name)s: %(message)s")
    head = _read_exactly(0, 4)
    blob = _read_exactly(0, int.from_bytes(head, "big")) if len(head) == 4 else b""
    try:
        cfg = dill.loads(blob)
        sup = _build(cfg)
        # the launcher's subscriptions made before start(): their events from
        # the first, held here until it connects them (see early_subs)
        held = HeldSubscriptions(lambda: sup.subscribe(None), cfg.get("early_subscribers", 0))
        sup.start()
        sup.core.control.held = held.hand_over
        _collect_less()
    except BaseException as exc:
        _say(f"error {type(exc).__name__}: {exc}")
        return 1
    commands: list[Command] = []
    wake = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:  # drain, as Supervisor.serve() does
        commands.append(("stop", True, 10.0, False))
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    threading.Thread(target=_watch_launcher, args=(commands, wake), daemon=True,
                     name="launcher-watch").start()
    _say("ready " + json.dumps({"shm": sup.shm_name, "metrics": sup.metrics_address}))
    drop_held = time.monotonic() + HOLD_FOR
    while True:
        wake.wait(0.2)
        wake.clear()
        if time.monotonic() > drop_held:
            held.drop()
            drop_held = float("inf")
        if sup.state != "running":  # stopped on its own
            sup.stop(False, 5.0, False)
            _say_final(sup)
            _say(f"crashed {type(sup.error).__name__}: {sup.error}")
            return 1
        if not commands:
            continue
        what, drain, timeout, suspend = commands.pop(0)
        orphan = cfg.get("orphan", "stop")
        if what == "orphaned" and orphan == "serve":
            log.warning("the launcher is gone; serving on (orphan='serve') until SIGTERM")
            signal.signal(signal.SIGINT, on_signal)
            continue
        if what == "orphaned":
            log.warning("the launcher is gone: stopping (orphan=%r)", orphan)
            suspend = orphan == "suspend"
            _take_what_was_sent(sup)
        sup.stop(drain, timeout, suspend)
        _say_final(sup)
        _say("stopped")
        return 1 if sup.error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
