"""The demo launcher behind ``saga-supervisor demo``.

It runs a supervisor on an embedded SQLite log with the reference host and
triggers sagas of a few kinds, as a real launcher would:

* ``health-check`` — one echo round trip each (the bulk: ``--sagas N``);
* ``restart-server`` — starts a real process (``sleep``) through the host,
  stops it, waits for its exit, starts it again;
* ``reconfigure`` — spawned by a trigger on ``config-changed`` bus events; a
  burst of such events evicts and replaces the one in flight;
* ``slow-probe`` — waits on a host sleep longer than its timeout: "saga timeout";
* ``provision`` — three steps, then the host refuses the fourth: the three are
  compensated in reverse order.
"""

from __future__ import annotations

import queue
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.facade.supervisor import Supervisor
from supervisor.saga import (
    SAGA_COMPLETED,
    SAGA_FAILED,
    SAGA_STARTED,
    Done,
    Event,
    Failed,
    IssueCmd,
    Saga,
    SagaAction,
    SagaContext,
    StepInfo,
    Target,
    Wait,
)


class HealthCheck(Saga):
    name = "health-check"
    timeout = 10.0

    def __init__(self, server: int) -> None:
        self.server = server

    def input_snapshot(self) -> dict[str, Any]:
        return {"server": self.server}

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "echo", "server": self.server})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Done() if event.kind == "echo" else Wait()


class RestartServer(Saga):
    """start -> stop -> wait for exit -> start again."""

    name = "restart-server"
    timeout = 20.0

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.phase = "starting"
        self.pid = 0

    def input_snapshot(self) -> dict[str, Any]:
        return {"argv": self.argv}

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "run", "argv": self.argv})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if self.phase == "starting" and event.kind == "started":
            self.pid = event.data["pid"]
            self.phase = "stopping"
            return IssueCmd(Target.HOST, {"op": "stop", "pid": self.pid})
        if self.phase == "stopping" and event.kind == "echo":
            self.phase = "waiting-exit"
            return Wait()  # the echo of `stop` is not what we wait for: the exit is
        if self.phase in ("stopping", "waiting-exit") and event.kind == "exited" \
                and event.data["pid"] == self.pid:
            self.phase = "restarting"
            return IssueCmd(Target.HOST, {"op": "run", "argv": self.argv})
        if self.phase == "restarting" and event.kind == "started":
            self.pid = event.data["pid"]
            self.phase = "cleanup"
            return IssueCmd(Target.HOST, {"op": "stop", "pid": self.pid})
        if self.phase == "cleanup" and event.kind == "echo":
            return Done()
        return Wait()


class Reconfigure(Saga):
    name = "reconfigure"
    timeout = 10.0

    def __init__(self, revision: int) -> None:
        self.revision = revision

    def input_snapshot(self) -> dict[str, Any]:
        return {"revision": self.revision}

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "sleep", "seconds": 0.05,
                                      "revision": self.revision})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Done() if event.kind == "echo" else Wait()


class SlowProbe(Saga):
    name = "slow-probe"
    timeout = 0.3

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "sleep", "seconds": 2.0})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        return Done() if event.kind == "echo" else Wait()


class Provision(Saga):
    name = "provision"
    timeout = 10.0
    STEPS = ("allocate-volume", "create-user", "open-port", "register-dns")

    def __init__(self) -> None:
        self.done = 0

    def start(self, ctx: SagaContext) -> SagaAction:
        return IssueCmd(Target.HOST, {"op": "echo", "do": self.STEPS[0]})

    def on_event(self, event: Event, ctx: SagaContext) -> SagaAction:
        if event.kind != "echo":
            return Wait()
        self.done += 1
        if self.done < 3:
            return IssueCmd(Target.HOST, {"op": "echo", "do": self.STEPS[self.done]})
        if self.done == 3:
            return IssueCmd(Target.HOST, {"op": "fail", "do": self.STEPS[3],
                                          "reason": "DNS zone is read-only"})
        return Failed("unexpected echo")

    def compensate(self, step: StepInfo, ctx: SagaContext) -> IssueCmd | None:
        return IssueCmd(Target.HOST, {"op": "echo", "undo": step.command.get("do")})


@dataclass
class DemoResult:
    outcomes: dict[int, tuple[str, str, str | None]] = field(default_factory=dict)
    elapsed: float = 0.0
    bulk_rate: float = 0.0

    def by_kind(self) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = {}
        for kind, state, _reason in self.outcomes.values():
            table.setdefault(kind, Counter())[state] += 1
        return table


class _Progress:
    """Live counters from the bus: started/completed/failed per second."""

    def __init__(self) -> None:
        self.started = self.completed = self.failed = 0
        self.names: dict[int, str] = {}
        self.outcomes: dict[int, tuple[str, str, str | None]] = {}
        self._last = (0, 0, 0, time.monotonic())
        self.rates = (0.0, 0.0, 0.0)

    def feed(self, ev: Event) -> None:
        if ev.kind == SAGA_STARTED:
            self.started += 1
            self.names[ev.saga_id or 0] = ev.data["name"]
        elif ev.kind == SAGA_COMPLETED:
            self.completed += 1
            self.outcomes[ev.saga_id or 0] = (ev.data["name"], "completed", None)
        elif ev.kind == SAGA_FAILED:
            self.failed += 1
            self.outcomes[ev.saga_id or 0] = (ev.data["name"], ev.data["state"],
                                              ev.data["reason"])

    def tick(self) -> None:
        s, c, f, t = self._last
        now = time.monotonic()
        dt = max(now - t, 1e-6)
        self.rates = ((self.started - s) / dt, (self.completed - c) / dt, (self.failed - f) / dt)
        self._last = (self.started, self.completed, self.failed, now)

    @property
    def in_flight(self) -> int:
        return self.started - self.completed - self.failed


class DemoInterrupted(Exception):
    """Ctrl-C: the demo's supervisor was stopped; `in_flight` sagas were
    failed with "supervisor stopped" (they are in the log)."""

    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight
        super().__init__(f"interrupted with {in_flight} saga(s) in flight")


def demo_capacity(sagas: int) -> int:
    """A claim table for `sagas` health checks plus the demo's other sagas,
    all of which may be in flight at once: a power of two, at least 65536."""
    need = max(sagas + 64, 65536)
    return 1 << (need - 1).bit_length()


def run_demo(data_dir: Path, sagas: int = 5000, workers: int = 2, durability: str = "normal",
             live: bool = True, out: Any = None, engine: str = "thread",
             capacity: int | None = None) -> DemoResult:
    """Run the demo launcher; returns every saga's outcome.  Ctrl-C stops
    the supervisor (which fails what is in flight) and raises
    :class:`DemoInterrupted`."""
    sup = Supervisor(data_dir, workers=workers, host=[sys.executable, "-m", "supervisor.host"],
                     durability=durability, engine=engine,
                     capacity=capacity if capacity is not None else demo_capacity(sagas))
    try:
        sup.start()
        result = _run(sup, sagas, live, out or sys.stdout)
    except KeyboardInterrupt:
        left = sup.in_flight() if sup.state == "running" else 0
        # a second Ctrl-C must not cut the stop short
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            sup.stop()
        finally:
            signal.signal(signal.SIGINT, old)
        raise DemoInterrupted(left) from None
    except BaseException:
        sup.stop()
        raise
    sup.stop()
    return result


def _run(sup: Supervisor, sagas: int, live: bool, out: Any) -> DemoResult:
    progress = _Progress()
    result = DemoResult()
    t0 = time.monotonic()
    sub = sup.subscribe()
    display = _Display(progress, live, out)
    try:
        sup.add_trigger(lambda ev: Reconfigure(ev.data["revision"]),
                        lambda ev: ev.kind == "config-changed")
        expected: list[int] = []

        def pump(until: float) -> None:
            """Take every bus event that is there (waiting until `until` for
            more), then refresh the display."""
            while True:
                left = until - time.monotonic()
                try:
                    while True:
                        progress.feed(sub.get(timeout=0))
                except queue.Empty:
                    pass
                display.maybe_refresh()
                if left <= 0:
                    return
                try:
                    progress.feed(sub.get(timeout=min(left, 0.1)))
                except queue.Empty:
                    pass

        expected.append(sup.spawn(RestartServer(["sleep", "30"])))
        expected.append(sup.spawn(SlowProbe()))
        expected += [sup.spawn(Provision()) for _ in range(3)]
        for rev in range(20):  # a burst: each replaces the one before
            sup.publish(Event("config-changed", {"revision": rev}))
        bulk_start = time.monotonic()
        chunk = 500
        for i in range(0, sagas, chunk):
            expected += [sup.spawn(HealthCheck(n)) for n in range(i, min(i + chunk, sagas))]
            pump(time.monotonic())
        last_pump = time.monotonic()
        for sid in expected:
            while True:
                try:
                    sup.wait(sid, timeout=0.1)
                    break
                except TimeoutError:
                    pump(time.monotonic())
            if time.monotonic() - last_pump > 0.1:
                pump(time.monotonic())
                last_pump = time.monotonic()
        result.bulk_rate = sagas / max(time.monotonic() - bulk_start, 1e-9)
        # every trigger-spawned saga must have ended too
        deadline = time.monotonic() + 15
        while (progress.in_flight > 0 or progress.started < len(expected) + 20) \
                and time.monotonic() < deadline:
            pump(time.monotonic() + 0.05)
    finally:
        display.close()
        sub.close()
    result.outcomes = dict(progress.outcomes)
    result.elapsed = time.monotonic() - t0
    return result


class _Display:
    """Live progress with rich when it is installed (the `cli` extra), else a
    plain line per second."""

    def __init__(self, progress: _Progress, live: bool, out: Any) -> None:
        self.p = progress
        self.out = out
        self.next = time.monotonic() + 1.0  # a first line after a second, not of zeros
        self._live: Any = None
        if live:
            try:
                from rich.live import Live
            except ImportError:  # the `cli` extra is not installed: plain lines
                return
            if getattr(out, "isatty", lambda: False)():
                self._live = Live(self._render(), refresh_per_second=4, transient=False)
                self._live.start()

    def _render(self) -> Any:
        from rich.table import Table

        t = Table(title="sagas", show_edge=False)
        for col in ("started", "completed", "failed", "in flight", "started/s",
                    "completed/s", "failed/s"):
            t.add_column(col, justify="right")
        p = self.p
        t.add_row(str(p.started), str(p.completed), str(p.failed), str(p.in_flight),
                  f"{p.rates[0]:,.0f}", f"{p.rates[1]:,.0f}", f"{p.rates[2]:,.0f}")
        return t

    def maybe_refresh(self) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + 0.25 if self._live else now + 1.0
        self.p.tick()
        if self._live is not None:
            self._live.update(self._render())
        else:
            self._plain_line()

    def _plain_line(self) -> None:
        p = self.p
        print(f"started {p.started:>7}  completed {p.completed:>7}  failed {p.failed:>5}  "
              f"in flight {p.in_flight:>6}  ({p.rates[1]:,.0f} completed/s)",
              file=self.out, flush=True)

    def close(self) -> None:
        self.p.tick()
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
        else:  # the final counts, always
            self._plain_line()


def print_summary(result: DemoResult, out: Any = None, as_json: bool = False) -> None:
    out = out or sys.stdout
    table = result.by_kind()
    reasons: dict[str, Counter[str]] = {}
    for kind, state, reason in result.outcomes.values():
        if reason:
            reasons.setdefault(kind, Counter())[reason.split(":")[0]] += 1
    if as_json:
        import json

        print(json.dumps({"elapsed": result.elapsed, "bulk_rate": result.bulk_rate,
                          "kinds": {k: dict(v) for k, v in table.items()},
                          "reasons": {k: dict(v) for k, v in reasons.items()}}), file=out)
        return
    rows = [(k, str(v["completed"]), str(v["failed"] + v["failed_compensation"]),
             ", ".join(f"{r} x{n}" for r, n in reasons.get(k, Counter()).most_common(3)))
            for k, v in sorted(table.items())]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"{'kind':<16}{'completed':>10}{'failed':>8}  reasons", file=out)
        for r in rows:
            print(f"{r[0]:<16}{r[1]:>10}{r[2]:>8}  {r[3]}", file=out)
    else:
        t = Table(title="summary")
        for col in ("kind", "completed", "failed", "failure reasons"):
            t.add_column(col, justify="left" if col in ("kind", "failure reasons") else "right")
        for r in rows:
            t.add_row(*r)
        Console(file=out).print(t)
    print(f"{len(result.outcomes)} sagas in {result.elapsed:.1f}s; health-check bulk: "
          f"{result.bulk_rate:,.0f} sagas/s", file=out)
