"""Prometheus / OpenMetrics exposition of a running engine, through
prometheus-client (the optional extra ``metrics``).

Counters and gauges are read at scrape time from what the engine keeps
anyway (its stats, its health snapshot, the kind index); only failures by
cause and the latency histograms are measured on the loop
(:mod:`.measure`), and only when metrics are served.  Scrapes run on the
HTTP server's thread and read loop-thread state unlocked: a scrape may be a
turn behind.
"""

from __future__ import annotations

import socket
import threading

from collections.abc import Callable, Iterator
from typing import Any

from supervisor._engine.observations import Observations
from supervisor.errors import SupervisorError

NEEDS = ("serving metrics needs prometheus-client: pip install 'saga-supervisor[metrics]'")


def require() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise SupervisorError(NEEDS) from None
    return prometheus_client


class EngineCollector:
    """A prometheus-client collector over one engine."""

    def __init__(self, health: Callable[[], dict[str, Any]], observations: Observations,
                 by_kind: dict[str, set[int]]) -> None:
        self.health = health
        self.observations = observations
        self.by_kind = by_kind
        self._procs: dict[int, Any] = {}  # psutil.Process by pid: cpu_percent needs one

    def collect(self) -> Iterator[Any]:
        """Every family; on a fleet's log, every sample labelled with the
        node's name (``node``), so that one Prometheus tells nodes apart."""
        report = self.health()
        node = (report.get("log") or {}).get("node")
        for fam in self._families(report):
            if node is not None:
                fam.samples = [s._replace(labels={**s.labels, "node": node})
                               for s in fam.samples]
            yield fam

    def _families(self, report: dict[str, Any]) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        st = report["stats"]

        def counter(name: str, doc: str, value: float) -> Any:
            return CounterMetricFamily(name, doc, value=value)

        yield counter("saga_spawned", "Sagas spawned", st["spawned"])
        yield counter("saga_completed", "Sagas completed", st["completed"])
        failed = CounterMetricFamily("saga_failed", "Sagas failed, by cause", labels=["cause"])
        for cause, n in self.observations.failed.items():
            failed.add_metric([cause], n)
        yield failed
        for name, key, doc in (
                ("saga_replays", "replayed", "Sagas resumed by replay"),
                ("saga_reissues", "reissued", "Commands re-issued (same saga id and step)"),
                ("saga_worker_restarts", "worker_restarts", "Worker processes restarted"),
                ("saga_host_restarts", "host_restarts", "Host processes restarted"),
                ("saga_bad_frames", "bad_frames", "Host frames that could not be used"),
                ("saga_unknown_answers", "unknown_answers",
                 "Host answers for no saga or step in flight"),
                ("saga_late_answers", "late_answers", "Host answers for ended sagas"),
                ("saga_input_errors", "input_errors", "Inputs dropped at a failure boundary"),
                ("saga_trigger_errors", "trigger_errors", "Trigger spawns that failed"),
                ("saga_poison", "poison_sagas", "Sagas failed for killing their worker"),
                ("saga_step_retries", "retries", "Steps issued again after a failed attempt"),
                ("saga_step_timeouts", "step_timeouts", "Step attempts past step_timeout"),
                ("saga_queue_timeouts", "queue_timeouts", "Sagas failed waiting in a queue"),
                ("saga_log_commits", "commits", "Log transactions"),
                ("saga_log_rows", "rows", "Log rows written")):
            yield counter(name, doc, st.get(key, 0))
        yield GaugeMetricFamily("saga_log_rows_per_commit", "Log rows per transaction (mean)",
                                value=st["rows"] / st["commits"] if st["commits"] else 0.0)
        yield GaugeMetricFamily("saga_up", "1 if the supervisor is healthy",
                                value=1.0 if report["healthy"] else 0.0)
        yield GaugeMetricFamily("saga_in_flight", "Sagas in flight",
                                value=report["supervisor"].get("sagas_in_flight", 0))
        by_kind = GaugeMetricFamily("saga_in_flight_by_kind", "Sagas in flight, by kind",
                                    labels=["kind"])
        for kind, ids in list(self.by_kind.items()):
            by_kind.add_metric([kind], len(ids))
        yield by_kind
        yield GaugeMetricFamily("saga_queued", "Sagas waiting in their kind's queue",
                                value=report.get("queued", 0))
        queued = GaugeMetricFamily("saga_queued_by_kind", "Sagas waiting in their kind's "
                                   "queue (max_in_flight), by kind", labels=["kind"])
        for kind, n in report.get("queued_by_kind", {}).items():
            queued.add_metric([kind], n)
        yield queued
        yield from self._workers(report["workers"], GaugeMetricFamily)
        host = report.get("host")
        if host is not None:
            yield GaugeMetricFamily("saga_host_up", "1 if the host is alive (0 while it "
                                    "restarts, or stays down past restart intensity)",
                                    value=1.0 if host.get("alive") else 0.0)
            yield counter("saga_host_frames_in", "Frames read from the host", host["frames_in"])
            yield counter("saga_host_frames_out", "Frames written to the host",
                          host["frames_out"])
        for name, doc, hists in (
                ("saga_duration_seconds", "Spawn to completion, by kind",
                 self.observations.duration),
                ("saga_step_round_trip_seconds", "Command dispatch to its answer, by kind",
                 self.observations.step_rtt)):
            fam = HistogramMetricFamily(name, doc, labels=["kind"])
            for kind, h in list(hists.items()):
                fam.add_metric([kind], h.cumulative(), sum_value=h.sum)
            yield fam

    def _workers(self, workers: list[dict[str, Any]], gauge: Any) -> Iterator[Any]:
        import psutil

        rss = gauge("saga_worker_rss_bytes", "Worker resident memory", labels=["worker"])
        cpu = gauge("saga_worker_cpu_percent", "Worker CPU since the last scrape",
                    labels=["worker"])
        age = gauge("saga_worker_heartbeat_age_seconds", "Seconds since a worker last spoke",
                    labels=["worker"])
        held = gauge("saga_worker_in_flight", "Sagas in flight on a worker", labels=["worker"])
        seen = set()
        for w in workers:
            label = [str(w["index"])]
            rss.add_metric(label, w.get("rss", 0))
            age.add_metric(label, w.get("heartbeat_age", 0.0))
            held.add_metric(label, w.get("sagas_in_flight", 0))
            pid = w.get("pid")
            value = 0.0
            if pid:
                seen.add(pid)
                try:
                    proc = self._procs.get(pid) or self._procs.setdefault(pid,
                                                                          psutil.Process(pid))
                    value = proc.cpu_percent(interval=None)
                except psutil.Error:
                    pass
            cpu.add_metric(label, value)
        for pid in set(self._procs) - seen:
            del self._procs[pid]
        yield from (rss, cpu, age, held)


# the metrics endpoint is open to any local user: it serves one request at a
# time on one thread, each connection gets this long to send its request and
# read the answer, and the kernel holds at most this many waiting
_REQUEST_TIMEOUT = 2.0
_BACKLOG = 16


class MetricsServer:
    """``/metrics`` over HTTP on (host, port) for one engine: one thread, one
    connection at a time, each bounded in time, so that idle or slow
    clients (any local user can open some) hold neither threads nor
    descriptors without bound, and cannot slow the sagas down."""

    def __init__(self, collector: EngineCollector, host: str, port: int) -> None:
        require()
        from http.server import HTTPServer

        from prometheus_client.exposition import MetricsHandler
        from prometheus_client.registry import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

        class Handler(MetricsHandler.factory(self.registry)):  # type: ignore[misc]
            timeout = _REQUEST_TIMEOUT  # (StreamRequestHandler: a socket timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(HTTPServer):
            request_queue_size = _BACKLOG
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        try:
            self.server = Server((host, port), Handler)
        except OSError as exc:
            raise SupervisorError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       name="saga-metrics", daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exposition(collector: EngineCollector) -> bytes:
    """The text a scrape would get, for ``saga-supervisor metrics``."""
    pc = require()
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return bytes(pc.generate_latest(registry))
