"""Prometheus metrics of a running supervisor: scraped over real HTTP while
sagas run, parsed with prometheus-client's own parser, and held against the
log; and the same exposition from `saga-supervisor metrics`."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections import Counter
from typing import Any, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor import Supervisor

from . import _suite, sagas as S
from .conftest import read_log, wait_for


def _scrape(sup: Supervisor) -> dict[str, Any]:
    addr = sup.metrics_address
    assert addr is not None
    with urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples: dict[str, Any] = {}
    nodes = set()  # the node label every sample carries on a fleet's log (else none)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = dict(s.labels)
            nodes.add(labels.pop("node", None))
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(labels.items()))
            samples[key] = s.value
    node = sup.health()["log"].get("node")  # (a fleet node's name, on PostgreSQL)
    assert nodes == {node}, nodes
    return samples


# every test here that uses make_sup() runs on both engines and both stores
sup_engine = _suite.both_engines
sup_store = _suite.both_stores


def test_metrics_agree_with_the_log(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup(metrics_port=0)
    parked = [sup.spawn(S.SleepSaga(30)) for _ in range(5)]
    wait_for(lambda: _scrape(sup).get("saga_in_flight_by_kind|kind=sleeper") == 5,
             what="in flight by kind")
    m = _scrape(sup)
    assert m["saga_in_flight"] == 5 and m["saga_up"] == 1.0
    assert m["saga_worker_in_flight|worker=0"] + m["saga_worker_in_flight|worker=1"] == 5
    assert m["saga_worker_rss_bytes|worker=0"] > 1 << 20
    ids = [sup.spawn(S.EchoSaga(i, steps=2)) for i in range(50)]
    ids += [sup.spawn(S.RefusingSaga()) for _ in range(10)]
    ids += [sup.spawn(S.SleepSaga(30, timeout=0.2)) for _ in range(4)]
    for sid in parked:
        assert sup.cancel(sid, "metrics test")
    outs = [sup.wait(i, 30) for i in ids + parked]
    m = _scrape(sup)
    sagas, steps = read_log(sup)
    states = Counter(r["state"] for r in sagas.values())
    assert m["saga_spawned_total"] == len(sagas) == sup.stats["spawned"]
    assert m["saga_completed_total"] == states["completed"]
    failed = {k.split("=")[1]: v for k, v in m.items() if k.startswith("saga_failed_total|")}
    assert sum(failed.values()) == states["failed"] == sum(o.failed for o in outs)
    assert (failed["action_failed"], failed["timeout"], failed["cancelled"]) == (10, 4, 5)
    echo = sum(1 for r in sagas.values() if r["name"] == "echo" and r["state"] == "completed")
    assert m["saga_duration_seconds_count|kind=echo"] == echo == 51  # the warm-up one too
    assert m["saga_duration_seconds_bucket|kind=echo|le=+Inf"] == echo
    assert 0 < m["saga_duration_seconds_sum|kind=echo"] < 51 * 10
    done_steps = sum(1 for v in steps.values() for st in v if st["state"] == "succeeded")
    rtt = sum(v for k, v in m.items() if k.startswith("saga_step_round_trip_seconds_count"))
    assert rtt == done_steps
    assert m["saga_host_frames_out_total"] >= len(ids)
    assert m["saga_log_rows_total"] == sup.stats["rows"] and m["saga_in_flight"] == 0
    proc = subprocess.run([sys.executable, "-m", "supervisor", "metrics", "--data-dir",
                           str(sup.data_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = {f.name for f in text_string_to_metric_families(proc.stdout)}
    assert {"saga_spawned", "saga_failed", "saga_duration_seconds", "saga_in_flight"} <= names


def test_metrics_port_is_checked_and_released(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        Supervisor(tmp_path / "x", metrics_port=70000)
    with Supervisor(tmp_path / "d", workers=1, metrics_port=0) as sup:
        addr = sup.metrics_address
        assert addr is not None and addr[0] == "127.0.0.1"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}/metrics", timeout=2)
