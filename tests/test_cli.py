"""The command line, run as real subprocesses against real data dirs, and
every code block of the README."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from supervisor import Supervisor

from . import _suite, sagas as S
from .conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent

sup_engine = _suite.both_engines  # a behaviour suite: every test on both engines


def cli(*args: str, cwd: Path | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("demo")
    proc = cli("demo", "--sagas", "300", "--data-dir", str(d / "saga-data"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    kinds = summary["kinds"]
    assert kinds["health-check"] == {"completed": 300}
    assert kinds["restart-server"] == {"completed": 1}
    assert kinds["slow-probe"] == {"failed": 1}
    assert kinds["provision"] == {"failed": 3}
    assert sum(kinds["reconfigure"].values()) == 20 and kinds["reconfigure"]["failed"] >= 1
    assert summary["reasons"]["slow-probe"] == {"saga timeout": 1}
    return d


def test_demo_plain_progress_and_summary(tmp_path: Path) -> None:
    proc = cli("demo", "--sagas", "100", "--no-live", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "health-check" in proc.stdout and "compensat" not in proc.stderr
    assert re.search(r"started\s+\d+\s+completed", proc.stdout)  # progress line
    assert (tmp_path / "saga-data" / "db" / "sagas.db").exists()


def test_sagas_list_filters_and_show(demo_dir: Path) -> None:
    d = str(demo_dir / "saga-data")
    rows = json.loads(cli("sagas", "--data-dir", d, "--state", "failed", "--json",
                          "--limit", "1000").stdout)
    assert rows and all(r["state"] == "failed" for r in rows)
    timeouts = json.loads(cli("sagas", "--data-dir", d, "--reason", "saga timeout",
                              "--json").stdout)
    assert [r["name"] for r in timeouts] == ["slow-probe"]
    kind = json.loads(cli("sagas", "--data-dir", d, "--kind", "provision", "--json").stdout)
    assert len(kind) == 3
    shown = cli("sagas", "--data-dir", d, "show", str(kind[0]["saga_id"]), "--json")
    doc = json.loads(shown.stdout)
    assert [s["state"] for s in doc["steps"]] == ["compensated"] * 3 + ["failed"]
    text = cli("sagas", "--data-dir", d, "show", str(kind[0]["saga_id"])).stdout
    assert "compensation" in text and "DNS zone is read-only" in text
    missing = cli("sagas", "--data-dir", d, "show", "999999")
    assert missing.returncode == 1 and "no saga 999999" in missing.stderr


def test_sagas_on_missing_empty_and_corrupt_logs(tmp_path: Path) -> None:
    missing = cli("sagas", "--data-dir", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no saga log" in missing.stderr
    with Supervisor(tmp_path / "empty", workers=1):
        pass
    empty = cli("sagas", "--data-dir", str(tmp_path / "empty"), "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    bad = tmp_path / "bad" / "db"
    bad.mkdir(parents=True)
    (bad / "sagas.db").write_bytes(b"this is not a database" * 100)
    corrupt = cli("sagas", "--data-dir", str(tmp_path / "bad"))
    assert corrupt.returncode == 3 and "sagas.db" in corrupt.stderr
    assert "damaged or not a SQLite database" in corrupt.stderr


def test_health_probe_exit_codes(make_sup: Callable[..., Supervisor], tmp_path: Path) -> None:
    none = cli("health", "--data-dir", str(tmp_path / "data"))
    assert none.returncode == 2 and "no supervisor is running on" in none.stderr
    sup = make_sup(restart_host=False)
    wait_for(lambda: sup.health_path.exists(), what="health file")
    ok = cli("health", "--data-dir", str(sup.data_dir), "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["supervisor"]["pid"] == sup.pid and len(report["workers"]) == 2
    sup.spawn(S.HostFaultSaga("die"))
    wait_for(lambda: cli("health", "--data-dir", str(sup.data_dir)).returncode == 1,
             timeout=20, what="probe reports the dead host")
    bad = cli("health", "--data-dir", str(sup.data_dir))
    assert "UNHEALTHY" in bad.stdout and "host down" in bad.stdout
    sup.stop()
    gone = cli("health", "--data-dir", str(sup.data_dir))
    assert gone.returncode == 2


def test_usage_errors_and_help() -> None:
    assert cli("bogus").returncode == 64
    for sub in ("demo", "health", "sagas", "events", "vacuum"):
        proc = cli(sub, "--help")
        assert proc.returncode == 0 and "--data-dir" in proc.stdout
    assert cli("demo", "--sagas", "-1").returncode == 64


def test_vacuum(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "v", workers=1) as sup:
        sid = sup.spawn(S.InstantSaga())
        assert sup.wait(sid, 10).completed
    keep = cli("vacuum", "--data-dir", str(tmp_path / "v"), "--older-than", "1")
    assert keep.returncode == 0 and "removed 0" in keep.stdout
    drop = cli("vacuum", "--data-dir", str(tmp_path / "v"), "--older-than", "0")
    assert drop.returncode == 0 and "removed 1" in drop.stdout


def _blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_test_command_is_what_ci_runs() -> None:
    """The quick start's test command is exactly .ci/run's last line."""
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "pytest" in ci and ci in [b.strip() for b in _blocks("bash")]


def test_readme_documents_every_supervisor_option() -> None:
    """Each keyword of Supervisor() has a row in README's configuration table."""
    import inspect

    from supervisor import Supervisor

    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Configuration"):text.index("## Command line")]
    documented = {name for cell in re.findall(r"^\| (`[^|]+`) \|", table, flags=re.M)
                  for name in re.findall(r"`(\w+)`", cell)}
    options = set(inspect.signature(Supervisor.__init__).parameters) - {"self"}
    assert options <= documented, sorted(options - documented)


def test_readme_python_blocks_run(tmp_path: Path) -> None:
    blocks = _blocks("python")
    assert len(blocks) == 3
    for i, code in enumerate(blocks):
        script = tmp_path / f"block{i}.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert "state='completed'" in subprocess.run(
        [sys.executable, str(tmp_path / "block0.py")], capture_output=True, text=True,
        timeout=120, cwd=tmp_path).stdout


def test_readme_cli_block_runs(demo_dir: Path) -> None:
    lines = [ln for b in _blocks("bash") for ln in b.splitlines()
             if ln.startswith("saga-supervisor ")]
    assert len(lines) == 3
    for line in lines:
        cmd = line.replace("saga-supervisor", f"{sys.executable} -m supervisor", 1)
        proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60,
                              cwd=demo_dir)
        assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
    show = subprocess.run(f"{sys.executable} -m supervisor sagas --data-dir ./saga-data show 3",
                          shell=True, capture_output=True, text=True, cwd=demo_dir)
    assert "provision" in show.stdout


def test_events_follows_the_bus(make_sup: Callable[..., Supervisor], tmp_path: Path) -> None:
    assert cli("events", "--data-dir", str(tmp_path / "none")).returncode == 2
    sup = make_sup()
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "events", "--data-dir",
                             str(sup.data_dir), "--count", "2", "--json"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    # spawn only once the follower is subscribed: watch for its connection
    wait_for(lambda: sup.health()["control"]["clients"] == 1, what="events client connected")
    wait_for(lambda: sup.health()["control"]["subscribers"] == 1, what="subscribed")
    sid = sup.spawn(S.InstantSaga())
    lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
    assert proc.wait(30) == 0
    proc.stdout.close()
    assert [(e["kind"], e["saga_id"]) for e in lines] == [("SagaStarted", sid),
                                                          ("SagaCompleted", sid)]
    assert lines[0]["version"] < lines[1]["version"]


def test_vacuum_and_run_on_bad_ground(tmp_path: Path) -> None:
    missing = cli("vacuum", "--data-dir", str(tmp_path / "none"), "--older-than", "1")
    assert missing.returncode == 2 and "no saga log" in missing.stderr
    bad = tmp_path / "bad" / "db"
    bad.mkdir(parents=True)
    (bad / "sagas.db").write_bytes(b"not a database at all" * 100)
    corrupt = cli("vacuum", "--data-dir", str(tmp_path / "bad"), "--older-than", "1")
    assert corrupt.returncode == 3 and "damaged or not a SQLite database" in corrupt.stderr
    assert cli("run", "--app", "nocolon").returncode == 64
    noapp = cli("run", "--app", "no_such_module_xyz:make")
    assert noapp.returncode == 1 and "cannot load" in noapp.stderr
    wrong = cli("run", "--app", "os:getcwd")
    assert wrong.returncode == 1 and "not a Supervisor" in wrong.stderr
    health_bad = tmp_path / "h" / "run"
    health_bad.mkdir(parents=True)
    (health_bad / "health.json").write_text("{not json")
    probe = cli("health", "--data-dir", str(tmp_path / "h"))
    assert probe.returncode == 1 and "unreadable health file" in probe.stderr


def test_vacuum_refuses_a_live_data_dir_and_bad_arguments(tmp_path: Path) -> None:
    d = tmp_path / "v"
    with Supervisor(d, workers=1) as sup:
        assert sup.wait(sup.spawn(S.InstantSaga()), 10).completed
        live = cli("vacuum", "--data-dir", str(d), "--older-than", "0")
        assert live.returncode == 1 and f"(pid {os.getpid()}) is running" in live.stderr
    for bad in ("-1", "nan", "inf"):
        assert cli("vacuum", "--data-dir", str(d), "--older-than", bad).returncode == 64
    dry = cli("vacuum", "--data-dir", str(d), "--older-than", "0", "--dry-run")
    assert dry.returncode == 0 and "would remove 1" in dry.stdout
    done = cli("vacuum", "--data-dir", str(d), "--older-than", "0")
    assert done.returncode == 0 and "removed 1" in done.stdout


ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


def test_version() -> None:
    import supervisor

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"saga-supervisor {supervisor.__version__}"


def test_sagas_subcommands_limits_and_iso_times(demo_dir: Path) -> None:
    d = str(demo_dir / "saga-data")
    alone = cli("sagas", "--data-dir", d, "--limit", "3")
    listed = cli("sagas", "list", "--data-dir", d, "--limit", "3")
    assert alone.returncode == listed.returncode == 0 and alone.stdout == listed.stdout
    total = len(json.loads(cli("sagas", "--data-dir", d, "--json", "--limit", "100000").stdout))
    assert f"3 of {total} shown (--limit N)" in listed.stderr
    assert len(ISO.findall(listed.stdout)) == 3  # one start time per row, with its offset
    assert cli("sagas", "--data-dir", d, "--limit", "0").returncode == 64
    rows = json.loads(cli("sagas", "list", "--data-dir", d, "--kind", "provision",
                          "--json").stdout)
    assert all(ISO.fullmatch(r["started_at"]) and ISO.fullmatch(r["ended_at"]) for r in rows)
    shown = json.loads(cli("sagas", "show", str(rows[0]["saga_id"]), "--data-dir", d,
                           "--json").stdout)
    step = shown["steps"][0]
    assert isinstance(step["cmd"], dict) and step["cmd"]["op"] == "echo"
    assert isinstance(step["output"], dict) and isinstance(step["compensation"], dict)
    assert "cmd_json" not in step and ISO.fullmatch(shown["saga"]["started_at"])


def test_data_dir_from_the_environment(demo_dir: Path) -> None:
    env = {**os.environ, "SAGA_DATA_DIR": str(demo_dir / "saga-data")}
    proc = subprocess.run([sys.executable, "-m", "supervisor", "sagas", "--json", "--limit",
                           "1"], capture_output=True, text=True, timeout=60, env=env,
                          cwd=demo_dir.parent)
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 1
    gone = subprocess.run([sys.executable, "-m", "supervisor", "health"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert gone.returncode == 2 and str(demo_dir / "saga-data") in gone.stderr


def test_cancel_publish_and_events_against_a_running_supervisor(
        make_sup: Callable[..., Supervisor], tmp_path: Path) -> None:
    from supervisor import Event

    for sub in (("cancel", "1"), ("publish", "k")):
        assert cli(*sub, "--data-dir", str(tmp_path / "none")).returncode == 2
    sup = make_sup()
    d = str(sup.data_dir)
    seen: list[Event] = []
    sup.subscribe(seen.append)
    parked = sup.spawn(S.SleepSaga(30))
    done = cli("cancel", str(parked), "--reason", "ops said so", "--data-dir", d)
    assert done.returncode == 0, done.stderr
    assert sup.wait(parked, 10).reason == "cancelled: ops said so"
    again = cli("cancel", str(parked), "--data-dir", d)
    assert again.returncode == 1 and "had already ended" in again.stderr
    unknown = cli("cancel", "999999", "--data-dir", d)
    assert unknown.returncode == 1 and "unknown saga id" in unknown.stderr
    assert cli("publish", "deploy", "--data", "{not json", "--data-dir", d).returncode == 64
    pub = cli("publish", "deploy", "--data", '{"rev": 7}', "--data-dir", d)
    assert pub.returncode == 0
    wait_for(lambda: any(e.kind == "deploy" and e.data == {"rev": 7} for e in seen),
             what="published event on the bus")
    before = sup.health()["control"]["subscribers"]  # (the process engine's own: 1)
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "events", "--data-dir", d,
                             "--count", "1", "--since-version", "0"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    wait_for(lambda: sup.health()["control"]["subscribers"] == before + 1, what="subscribed")
    sid = sup.spawn(S.InstantSaga())
    line = proc.stdout.readline()
    assert proc.wait(30) == 0
    proc.stdout.close()
    assert ISO.match(line) and "SagaStarted" in line and f"saga={sid}" in line


def test_demo_plain_fallback_has_no_zero_line_and_a_final_line(tmp_path: Path) -> None:
    proc = cli("demo", "--sagas", "100", "--no-live", "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("started")]
    assert lines, proc.stdout
    assert not re.match(r"started\s+0\s", lines[0])
    last = re.match(r"started\s+(\d+)\s+completed\s+(\d+)\s+failed\s+(\d+)", lines[-1])
    assert last and int(last[1]) == int(last[2]) + int(last[3]) >= 100


def test_a_package_installed_over_ours_is_named(tmp_path: Path) -> None:
    """supervisord's package is also called `supervisor`: installed after us it
    overwrites supervisor/__init__.py, and the CLI must say so."""
    import shutil

    fake = tmp_path / "site" / "supervisor"
    shutil.copytree(ROOT / "supervisor", fake, ignore=shutil.ignore_patterns("*.so"))
    (fake / "__init__.py").write_text("# supervisord's package\n")
    proc = subprocess.run([sys.executable, "-m", "supervisor", "--version"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 1
    assert "is not saga-supervisor's" in proc.stderr and "supervisord" in proc.stderr


def test_read_only_commands_load_only_what_they_use(tmp_path: Path) -> None:
    code = ("import sys, runpy; sys.argv = ['saga-supervisor', 'health', '--data-dir', "
            f"{str(tmp_path)!r}]\ntry:\n    runpy.run_module('supervisor', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('dill', 'multiprocess', 'apsw', 'cffi') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr
