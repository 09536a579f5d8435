"""A fleet of supervisors on one PostgreSQL log (issue 22, first part): nodes
with ids of their own, an epoch that fences, a lease that a paused node
outlives.  Real supervisors (both engines), a real server (tests/_pg.py),
recording hosts, real SIGSTOP/SIGCONT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor import Event, FencedError, Supervisor
from supervisor.testing import FakeHost

from . import sagas as S
from .conftest import HOST_ARGV, read_log, wait_for, wait_supervisor_gone

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _nodes(url: str) -> dict[str, dict]:
    out = _cli("nodes", "--log", url, "--json")
    assert out.returncode == 0, out.stderr
    return {n["name"]: n for n in json.loads(out.stdout)}


def _on_both(spawn: Any) -> list[list[int]]:
    """`spawn(k)` for k in (0, 1), each on a thread of its own, started at
    once: what each returned (the ids it spawned)."""
    got: list[list[int]] = [[], []]
    go = threading.Barrier(2)

    def run(k: int) -> None:
        go.wait(30)
        got[k] = spawn(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got


def test_two_nodes_share_one_log_with_ids_of_their_own(tmp_path: Path, pg_url: str,
                                                       engine: str) -> None:
    hosts = [FakeHost(workdir=tmp_path / f"h{k}") for k in (1, 2)]
    sups = [Supervisor(tmp_path / f"d{k}", workers=1, host=hosts[k - 1].argv, log=pg_url,
                       node=f"web-{k}", engine=engine) for k in (1, 2)]
    try:
        for sup in sups:
            sup.start()
        got = _on_both(lambda k: [sups[k].spawn(S.EchoSaga(n, steps=2)) for n in range(400)])
        for k in (0, 1):
            assert all(sups[k].wait(i, 60).completed for i in got[k])
        nodes = _nodes(pg_url)
        assert {n["state"] for n in nodes.values()} == {"live"}
        assert nodes["web-1"]["node_no"] != nodes["web-2"]["node_no"]
        assert all(n["running"] == 0 and n["epoch"] >= 1 for n in nodes.values())
    finally:
        for sup in sups:
            sup.stop()
    sagas, _ = read_log(pg_url)
    assert len(set(got[0]) | set(got[1])) == 800  # no id given to two sagas
    for k, name in ((0, "web-1"), (1, "web-2")):
        no = nodes[name]["node_no"]
        assert all(i >> 40 == no and i < 2**53 for i in got[k])  # the node's own range
        assert {sagas[i]["node_no"] for i in got[k]} == {no}
        sent = {(r["saga_id"], r["step"]) for r in hosts[k].received()}
        assert {i for i, _ in sent} >= set(got[k])  # each node's sagas ran on its host
    assert {n["state"] for n in _nodes(pg_url).values()} == {"gone"}  # stopped: released
    listed = _cli("sagas", "--log", pg_url, "--json", "--limit", "1000")
    by_node = {r["saga_id"]: r["node"] for r in json.loads(listed.stdout)}
    assert {by_node[i] for i in got[0]} == {"web-1"} and {by_node[i] for i in got[1]} == \
        {"web-2"}  # the fleet's view names the owning node of each saga
    shown = _cli("sagas", "show", str(got[1][0]), "--log", pg_url)
    assert "  node web-2" in shown.stdout, shown


def test_a_supervisor_started_under_a_running_nodes_name_fences_it(
        tmp_path: Path, pg_url: str, engine: str) -> None:
    """B starts as "web-1" while A runs as "web-1" (on another data dir, as on
    another machine): A's next commit fails, A stops, its host gets nothing
    more; B owns A's sagas and resumes them by replay."""
    host_a, host_b = FakeHost(workdir=tmp_path / "ha"), FakeHost(workdir=tmp_path / "hb")
    a = Supervisor(tmp_path / "a", workers=1, host=host_a.argv, log=pg_url, node="web-1",
                   engine=engine, **({"orphan": "suspend"} if engine == "process" else {}))
    a.register_kind(S.LimitedSaga)
    a.start()
    b = None
    try:
        held = a.spawn(S.LimitedSaga(5, seconds=600, timeout=900), durable=True)
        assert a.wait(a.spawn(S.EchoSaga(1)), 30).completed
        wait_for(lambda: any(r["saga_id"] == held for r in host_a.received()),
                 what="the held saga's step on A's host")
        before = len(host_a.received())
        b = Supervisor(tmp_path / "b", workers=1, host=host_b.argv, log=pg_url,
                       node="web-1", engine=engine)
        b.register_kind(S.LimitedSaga)
        b.start()  # claims web-1's next epoch: A is fenced from here on
        try:
            a.spawn(S.EchoSaga(2))
        except Exception:  # it may already know
            pass
        wait_for(lambda: a.state == "stopped", timeout=30, what="A stops")
        if engine == "thread":
            assert isinstance(a.error, FencedError) and "fenced" in str(a.error)
        assert len(host_a.received()) == before  # nothing new reached A's host
        b.publish(Event("finish", 5))
        assert b.wait(held, 30).completed  # B owns web-1's sagas: resumed by replay
    finally:
        a.stop()
        if b is not None:
            b.stop()


_PAUSED = """
import json, sys
from supervisor import Supervisor
from tests.sagas import EchoSaga

if __name__ == "__main__":
    data, url, engine, argv = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    sup = Supervisor(data, workers=1, host=argv, log=url, node="paused", node_lease=1.5,
                     engine=engine, health_interval=0.1)
    sup.start()
    print("ready", flush=True)
    n = 0
    try:
        while True:  # steady work until the supervisor stops under us
            n += 1
            sup.wait(sup.spawn(EchoSaga(n)), 30)
    except Exception as exc:
        print(json.dumps({"stopped": type(exc).__name__, "error": repr(sup.error)}),
              flush=True)
    finally:
        sup.stop()
"""


def test_a_node_paused_past_its_lease_sends_nothing_when_it_resumes(
        tmp_path: Path, pg_url: str, engine: str) -> None:
    """SIGSTOP the supervisor (the launcher, or the supervisor process) past
    its lease, under load; SIGCONT: it must send its host nothing new (not
    even what it had committed before the pause) and stop."""
    import psycopg

    host = FakeHost(workdir=tmp_path / "h")
    script = tmp_path / "paused.py"
    script.write_text(textwrap.dedent(_PAUSED))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "d"), pg_url, engine,
                             json.dumps(host.argv)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        wait_for(lambda: len(host.received()) >= 200, timeout=60, what="work flowing")
        health = json.loads((tmp_path / "d" / "run" / "health.json").read_text())
        pid = health["supervisor"]["pid"]  # the launcher, or its supervisor process
        os.kill(pid, signal.SIGSTOP)
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                wait_for(lambda: conn.execute(
                    "SELECT lease_until < now() - interval '0.5 seconds' FROM saga_node "
                    "WHERE name = 'paused'").fetchone()[0], timeout=30,
                    what="its lease to run out, by the database's clock")
            sent = len(host.received())  # (the host had a second to drain its pipe)
        finally:
            os.kill(pid, signal.SIGCONT)
        line = proc.stdout.readline()
        assert proc.wait(60) == 0
        assert json.loads(line)["stopped"], line
        assert len(host.received()) == sent  # nothing new after the pause
        if engine == "thread":
            assert "FencedError" in json.loads(line)["error"]
            err = json.loads(line)["error"]  # its own clock, or the database's
            assert "could not renew its lease" in err or "lease ran out" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()


def test_node_is_checked(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(ValueError, match="give log="):
        Supervisor(tmp_path / "a", node="web-1")
    with pytest.raises(ValueError, match="node must be"):
        Supervisor(tmp_path / "a", log=pg_url, node="")
    with pytest.raises(ValueError, match="node_lease"):
        Supervisor(tmp_path / "a", log=pg_url, node_lease=0)
    out = _cli("nodes")
    assert out.returncode == 64 and "--log" in out.stderr


def test_the_documented_example_runs(tmp_path: Path, pg_url: str) -> None:
    """docs/fleet.md's blocks, as a user would paste them (SAGA_LOG set)."""
    import re

    text = (ROOT / "docs" / "fleet.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (shell,) = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_LOG": pg_url}
    (tmp_path / "app.py").write_text(code)
    nodes = [subprocess.Popen([sys.executable, "app.py", f"web-{k}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (1, 2, 3)]  # three nodes at once: the README's saga as a fleet
    for k, node in enumerate(nodes, 1):
        out, err = node.communicate(timeout=120)
        assert node.returncode == 0 and f"node web-{k} on PostgreSQL 1" in out, err
        assert "Outcome(" in out and "completed" in out, out
    listed = subprocess.run(shell.replace("saga-supervisor", f"{sys.executable} -m supervisor",
                                          1), shell=True, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed
    assert all(f"web-{k}: gone, epoch 1" in listed.stdout for k in (1, 2, 3)), listed


def test_two_nodes_racing_one_key_get_one_saga(tmp_path: Path, pg_url: str,
                                               engine: str) -> None:
    """Keys hold across the fleet: two nodes spawn the same keys at once,
    from threads of their own; each key starts one saga, and both nodes
    answer with its id.  Neither node stops."""
    from collections import Counter

    sups = [Supervisor(tmp_path / f"d{k}", workers=1, host=None, log=pg_url, node=f"n{k}",
                       engine=engine) for k in (1, 2)]
    keys = [f"deploy-{n}" for n in range(60)]
    try:
        for sup in sups:
            sup.start()
        got = _on_both(lambda k: [sups[k].spawn(S.InstantSaga(), key=key) for key in keys])
        assert got[0] == got[1]  # the same saga for each key, whichever node asked
        owners = Counter(i >> 40 for i in got[0])
        numbers = {name: n["node_no"] for name, n in _nodes(pg_url).items()}
        for k, sup in enumerate(sups):
            mine = [i for i in got[0] if i >> 40 == numbers[f"n{k + 1}"]]
            assert all(sup.wait(i, 30).completed for i in mine)
            assert sup.state == "running" and sup.error is None
        assert sum(owners.values()) == 60
    finally:
        for sup in sups:
            sup.stop()
    sagas, _ = read_log(pg_url)
    keyed = Counter(r["idem_key"] for r in sagas.values() if r["idem_key"])
    assert keyed == {k: 1 for k in keys}  # one saga per key in the log


def test_cancel_from_anywhere_is_decided_by_the_owning_node(tmp_path: Path, pg_url: str,
                                                            engine: str) -> None:
    """``cancel ID --log URL`` from another process: the owner is woken
    (NOTIFY, backed by its poll) and decides on its loop."""
    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, log=pg_url, node="owner",
                     engine=engine)
    with sup:
        sid = sup.spawn(S.SleepSaga(60, timeout=120), durable=True)
        out = _cli("cancel", str(sid), "--log", pg_url, "--reason", "from afar")
        assert out.returncode == 0 and "cancelled: from afar" in out.stdout, out
        assert "by its node 'owner'" in out.stdout
        o = sup.wait(sid, 10)
        assert o.failed and o.reason == "cancelled: from afar"
        again = _cli("cancel", str(sid), "--log", pg_url)
        assert again.returncode == 1 and "had already ended: failed" in again.stderr, again
        ended = sup.wait(sup.spawn(S.InstantSaga()), 10)
        late = _cli("cancel", str(ended.saga_id), "--log", pg_url)
        assert late.returncode == 1 and "already ended: completed" in late.stderr
        assert _cli("cancel", str(10**15), "--log", pg_url).returncode == 1  # none such
    assert read_log(pg_url)[0][sid]["failure_reason"] == "cancelled: from afar"


_DIES = """
import json, sys
from supervisor import Supervisor
from tests.sagas import SleepSaga

if __name__ == "__main__":
    from tests.conftest import crash_kw

    sup = Supervisor(sys.argv[1], workers=1, host=json.loads(sys.argv[3]), log=sys.argv[2],
                     node="gone-1", node_lease=1.0, engine=sys.argv[4],
                     **crash_kw(sys.argv[4]))
    sup.start()
    print(json.dumps(sup.spawn(SleepSaga(600, timeout=900), durable=True)), flush=True)
    import signal
    signal.pause()
"""


def _a_node_killed_with_a_saga_running(tmp_path: Path, pg_url: str, engine: str) -> int:
    """Node "gone-1" (lease 1 s, data dir tmp_path/d) runs a long saga and is
    SIGKILLed once its step is logged: the saga's id."""
    script = tmp_path / "dies.py"
    script.write_text(textwrap.dedent(_DIES))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "d"), pg_url,
                             json.dumps(HOST_ARGV), engine], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    sid = int(json.loads(proc.stdout.readline()))
    wait_for(lambda: sid in read_log(pg_url)[1], what="its step logged (the host sleeps)")
    proc.kill()  # SIGKILL: the node dies with its saga running
    proc.wait(30)
    proc.stdout.close()
    wait_supervisor_gone(tmp_path / "d")
    return sid


def test_a_dead_nodes_saga_is_cancelled_at_once_and_never_runs_again(
        tmp_path: Path, pg_url: str, engine: str) -> None:
    import psycopg

    sid = _a_node_killed_with_a_saga_running(tmp_path, pg_url, engine)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        wait_for(lambda: conn.execute("SELECT lease_until < now() FROM saga_node WHERE name "
                                      "= 'gone-1'").fetchone()[0], timeout=30,
                 what="its lease to run out")
    assert _nodes(pg_url)["gone-1"]["state"] == "dead: waiting for takeover"
    out = _cli("cancel", str(sid), "--log", pg_url, "--reason", "node lost")
    assert out.returncode == 0 and "is down: fenced" in out.stdout, out
    sagas, steps = read_log(pg_url)
    assert sagas[sid]["state"] == "failed" and sagas[sid]["failure_reason"] == \
        "cancelled: node lost"
    assert [st["state"] for st in steps[sid]] == ["failed"]
    host = FakeHost(workdir=tmp_path / "h")  # (records what it is sent)
    again = Supervisor(tmp_path / "d", workers=1, host=host.argv, log=pg_url, node="gone-1",
                       engine=engine)
    with again:  # back under its name: the cancelled saga is ended, never run again
        assert again.wait(sid, 10).reason == "cancelled: node lost"
        assert again.in_flight() == 0
        assert again.wait(again.spawn(S.EchoSaga(1)), 10).completed
    assert {r["saga_id"] for r in host.received()} & {sid} == set()


def test_an_orphan_timeout_kind_on_a_dead_node_is_failed_by_a_live_one(
        tmp_path: Path, pg_url: str, engine: str) -> None:
    """A node dies (SIGKILL) with a saga of a kind registered with
    orphan_timeout elsewhere: once its lease has been expired that long, a
    live node fences it and fails the saga; back under its name, the dead
    node never runs it."""
    sid = _a_node_killed_with_a_saga_running(tmp_path, pg_url, engine)
    live = Supervisor(tmp_path / "live", workers=1, host=HOST_ARGV, log=pg_url, node="live",
                      node_lease=1.5, engine=engine)
    live.register_kind(S.SleepSaga, orphan_timeout=0.5)
    with live:
        wait_for(lambda: read_log(pg_url)[0][sid]["state"] == "failed", timeout=30,
                 what="the orphan failed by the live node")
        assert live.state == "running"
    row = read_log(pg_url)[0][sid]
    assert row["failure_reason"] == "orphaned: its node 'gone-1' was gone for more than 0.5s"
    host = FakeHost(workdir=tmp_path / "h")
    back = Supervisor(tmp_path / "d", workers=1, host=host.argv, log=pg_url, node="gone-1",
                      engine=engine)
    with back:
        assert back.wait(sid, 10).reason == row["failure_reason"]
        assert back.in_flight() == 0
    assert sid not in {r["saga_id"] for r in host.received()}
    with pytest.raises(ValueError, match="orphan_timeout"):
        live.register_kind(S.SleepSaga, orphan_timeout=-1)


def test_a_node_cut_off_from_the_database_stops_and_recovers_once_healed(
        tmp_path: Path, engine: str) -> None:
    """The node runs in a network namespace of its own and reaches the server
    over a veth pair; the link goes down under load.  It cannot renew its
    lease: by its own clock it stops, sending its host nothing more, and
    neither hangs nor commits.  Healed, a supervisor under its name recovers."""
    from tests._netns import Netns
    from tests._pg import Cluster

    net = Netns()
    if net.why:
        pytest.skip(net.why)
    cluster = None
    try:
        cluster = Cluster(also_on=net.host_ip, own=True)
        if cluster.url is None:
            pytest.skip(cluster.why)
        url = cluster.database("cut")
        far = url.replace("127.0.0.1", net.host_ip)  # the server, from the namespace
        host = FakeHost(workdir=tmp_path / "h")
        script = tmp_path / "node.py"
        script.write_text(textwrap.dedent(_PAUSED))
        proc = subprocess.Popen(net.inside(sys.executable, str(script), str(tmp_path / "d"),
                                           far, engine, json.dumps(host.argv)),
                                cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "ready"
            wait_for(lambda: len(host.received()) >= 200, timeout=60, what="work flowing")
            net.cut()
            line = proc.stdout.readline()  # it stops by itself (no hang)
            assert proc.wait(60) == 0
            sent = len(host.received())
            if engine == "thread":  # (the process engine's launcher sees it gone)
                assert "could not renew its lease" in json.loads(line)["error"], line
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            proc.stdout.close()
        net.heal()
        back = Supervisor(tmp_path / "d", workers=1, host=host.argv, log=url, node="paused",
                          engine=engine)
        with back:  # healed: under its name, it recovers and works
            assert back.wait(back.spawn(S.EchoSaga(1)), 30).completed
        sagas, steps = read_log(url)
        assert all(r["state"] in ("completed", "failed") for r in sagas.values())
        assert all(st["state"] != "pending" for v in steps.values() for st in v)
        assert len(host.received()) == sent + 1  # the cut node sent nothing more
    finally:
        if cluster is not None:
            cluster.stop()
        net.remove()


_NODE = """
import json, signal, sys
from supervisor import Supervisor
from tests.sagas import LimitedSaga

if __name__ == "__main__":
    data, url, engine, argv, name, n, lease = sys.argv[1:8]
    sup = Supervisor(data, workers=1, host=json.loads(argv), log=url, node=name,
                     node_lease=float(lease), engine=engine, health_interval=0.1)
    sup.register_kind(LimitedSaga, portable=True, max_in_flight=4)
    sup.start()
    ids = [sup.spawn(LimitedSaga(k, 1, timeout=300), durable=True) for k in range(int(n))]
    print(json.dumps(ids), flush=True)
    signal.pause()
"""


class _Node:
    """A node in a process of its own, whose host never answers a sleep."""

    def __init__(self, tmp_path: Path, url: str, engine: str, name: str, spawn: int,
                 lease: float = 1.0) -> None:
        from supervisor.testing import silence

        self.host = FakeHost({"sleep": silence()}, workdir=tmp_path / f"host-{name}")
        self.data = tmp_path / name
        script = tmp_path / "node.py"
        script.write_text(textwrap.dedent(_NODE))
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.data), url, engine,
             json.dumps(self.host.argv), name, str(spawn), str(lease)], cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None
        self.ids: list[int] = json.loads(self.proc.stdout.readline())

    def sent(self) -> set[int]:
        return {r["saga_id"] for r in self.host.received()}

    def kill(self) -> None:
        """SIGKILL, as a machine dies: the launcher and its supervisor process."""
        health = json.loads((self.data / "run" / "health.json").read_text())
        for pid in {self.proc.pid, health["supervisor"]["pid"]}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        wait_supervisor_gone(self.data)


def test_a_portable_kinds_sagas_are_taken_over_even_when_the_taker_dies_halfway(
        tmp_path: Path, pg_url: str, engine: str) -> None:
    """Node A dies (SIGKILL) with 4 sagas running and 8 queued, all of a
    portable kind; node B takes them over (its host never answers either),
    and dies too; node C takes them over from B and ends them all.  Each open
    step is re-issued on each taker's host at its logged attempt; each saga
    ends once, owned by C; A back under its name runs none of them."""
    import psycopg

    a = _Node(tmp_path, pg_url, engine, "node-a", 12)
    wait_for(lambda: len(a.sent()) == 4, what="A's four running sagas on its host")
    a.kill()
    b = _Node(tmp_path, pg_url, engine, "node-b", 0)
    try:
        wait_for(lambda: len(b.sent()) == 4, timeout=30, what="B replays four on its host")
        numbers = {name: n["node_no"] for name, n in _nodes(pg_url).items()}
        sagas, _ = read_log(pg_url)
        assert {sagas[i]["node_no"] for i in a.ids} == {numbers["node-b"]}  # re-owned
    finally:
        b.kill()
    host_c = FakeHost(workdir=tmp_path / "host-c")  # answers every sleep
    c = Supervisor(tmp_path / "c", workers=1, host=host_c.argv, log=pg_url, node="node-c",
                   node_lease=1.0, engine=engine)
    c.register_kind(S.LimitedSaga, portable=True, max_in_flight=4)
    with c:
        wait_for(lambda: c.stats["taken_over"] == 12, timeout=30, what="C takes over")
        outcomes = [c.wait(i, 60) for i in a.ids]
        assert all(o.completed for o in outcomes), outcomes
    with psycopg.connect(pg_url, autocommit=True) as conn:
        epochs = dict(conn.execute("SELECT name, epoch FROM saga_node").fetchall())
    assert epochs["node-a"] >= 2 and epochs["node-b"] >= 2  # fenced by their takers
    sagas, steps = read_log(pg_url)
    numbers = {name: n["node_no"] for name, n in _nodes(pg_url).items()}
    assert {sagas[i]["node_no"] for i in a.ids} == {numbers["node-c"]}
    assert all(sagas[i]["state"] == "completed" for i in a.ids)
    assert all([st["state"] for st in steps[i]] == ["succeeded"] for i in a.ids)
    received = host_c.received()
    assert sorted(r["saga_id"] for r in received) == sorted(a.ids)  # each re-issued once
    assert {r["attempt"] for r in received} == {1}  # at its logged attempt
    assert len(a.sent()) == 4 and len(b.sent()) == 4  # nothing more after their deaths
    back = FakeHost(workdir=tmp_path / "host-a2")
    again = Supervisor(a.data, workers=1, host=back.argv, log=pg_url, node="node-a",
                       engine=engine)
    again.register_kind(S.LimitedSaga, portable=True)
    with again:
        assert again.in_flight() == 0 and again.wait(a.ids[0], 10).completed
    assert back.received() == []


def test_portable_is_checked(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "d")
    with pytest.raises(ValueError, match="replay=True"):
        sup.register_kind(S.SleepSaga, replay=False, portable=True)
    with pytest.raises(ValueError, match="host-bound"):
        sup.register_kind(S.SleepSaga, portable=True, orphan_timeout=5)
    with pytest.raises(TypeError, match="portable"):
        sup.register_kind(S.SleepSaga, portable="yes")  # type: ignore[arg-type]


def test_a_fleet_limit_holds_across_nodes_in_one_fifo(tmp_path: Path, pg_url: str,
                                                      engine: str) -> None:
    """Two nodes spawn 8 sagas each of a kind limited to 2 across the fleet,
    at once: never more than 2 run at any instant (from the log's start and
    end times), and they start in the fleet's queue order."""
    sups = [Supervisor(tmp_path / f"d{k}", workers=1, host=HOST_ARGV, log=pg_url,
                       node=f"lim-{k}", engine=engine) for k in (1, 2)]
    try:
        for sup in sups:
            sup.register_kind(S.LimitedSaga, fleet_limit=2)
            sup.start()
        got = _on_both(lambda k: [sups[k].spawn(S.LimitedSaga(n, seconds=0.3, timeout=60))
                                  for n in range(8)])
        for k in (0, 1):
            assert all(sups[k].wait(i, 60).completed for i in got[k])
    finally:
        for sup in sups:
            sup.stop()
    sagas, _ = read_log(pg_url)
    rows = [sagas[i] for i in got[0] + got[1]]
    edges = sorted([(r["started_at"], 1) for r in rows] + [(r["ended_at"], -1) for r in rows])
    running = peak = 0
    for _, step in edges:  # (an end at the same instant frees its slot first)
        running += step
        peak = max(peak, running)
    assert peak == 2  # the limit is reached, and never passed
    by_seq = sorted(rows, key=lambda r: r["queue_seq"])
    for a, b in zip(by_seq, by_seq[1:]):  # FIFO: a later grant never starts first
        assert a["started_at"] <= b["started_at"] + 0.2, (a, b)
    assert {r["node_no"] for r in rows} == {r["saga_id"] >> 40 for r in rows}  # both nodes


def test_a_grant_waits_for_an_earlier_number_still_in_flight(tmp_path: Path, pg_url: str,
                                                            engine: str) -> None:
    """The fleet's FIFO is exact across nodes: a queued saga is not granted
    while a saga numbered before it is still in its node's transaction.  That
    node is the store's own batch write (``write_batch``, as every node's
    commit runs it), held open on a connection of the test's between its
    number and its commit; the code before granted the later saga at once."""
    import time

    import psycopg

    from supervisor.store.batch import Batch
    from supervisor.store.pg_rows import write_batch

    def rows(sql: str, *params: Any) -> list[tuple]:
        with psycopg.connect(pg_url, autocommit=True) as c:
            return c.execute(sql, params).fetchall()

    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, log=pg_url, node="fifo-a",
                     engine=engine)
    sup.register_kind(S.LimitedSaga, fleet_limit=1)
    held = psycopg.connect(pg_url)
    try:
        with sup:
            node_no = rows("SELECT node_no FROM saga_node WHERE name = 'fifo-a'")[0][0]
            early = (node_no << 40) | 0xFFFFFFF  # numbered first; never committed yet
            with held.cursor() as cur:
                write_batch(cur, Batch(queued=[(early, "limited", time.time(), "{}", 0)]),
                            None)
                cur.execute("UPDATE saga SET node_no = %s WHERE saga_id = %s",
                            (node_no, early))
            late = sup.spawn(S.LimitedSaga(1, seconds=0.05, timeout=60))
            wait_for(lambda: rows("SELECT state FROM saga WHERE saga_id = %s", late)
                     == [("queued",)], what="the later saga queued and committed")
            wait_for(lambda: rows("SELECT saga_id FROM saga_slot") or rows(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 7405318 "
                "AND NOT granted"), what="a granter at work")
            assert rows("SELECT saga_id FROM saga_slot") == []  # the later one: not yet
            held.commit()
            wait_for(lambda: rows("SELECT saga_id FROM saga_slot") == [(early,)],
                     what="the earlier number granted first")
            assert rows("SELECT state FROM saga WHERE saga_id = %s", late) == [("queued",)]
            with held.cursor() as cur:  # its saga ends, as its node would log it
                cur.execute("UPDATE saga SET state = 'failed', ended_at = %s WHERE "
                            "saga_id = %s", (time.time(), early))
                cur.execute("SELECT pg_notify('saga_slot', '')")
            held.commit()
            assert sup.wait(late, 30).completed
        seqs = dict(rows("SELECT saga_id, queue_seq FROM saga"))
        assert seqs[early] < seqs[late]
    finally:
        held.close()


def test_fleet_limit_is_checked(tmp_path: Path, engine: str) -> None:
    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine)
    with pytest.raises(ValueError, match="not both"):
        sup.register_kind(S.LimitedSaga, fleet_limit=2, max_in_flight=2)
    with pytest.raises(ValueError, match="fleet_limit must be >= 1"):
        sup.register_kind(S.LimitedSaga, fleet_limit=0)
    with pytest.raises(TypeError, match="fleet_limit must be an int"):
        sup.register_kind(S.LimitedSaga, fleet_limit=True)
    sup.register_kind(S.LimitedSaga, fleet_limit=1)  # on SQLite: this node is the fleet
    with sup:
        ids = [sup.spawn(S.LimitedSaga(n, seconds=0.05)) for n in range(3)]
        assert all(sup.wait(i, 30).completed for i in ids)
    rows = sorted(read_log(sup)[0].values(), key=lambda r: r["started_at"])
    assert all(a["ended_at"] <= b["started_at"] for a, b in zip(rows, rows[1:]))
