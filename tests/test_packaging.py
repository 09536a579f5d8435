"""Packaging as a user meets it: the documented release command run from the
project root, an sdist that builds on its own, one cp310-abi3 wheel, a fresh
virtual environment that installs it and runs the demo away from the
checkout, and a missing C compiler that says what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pyproject-build` from the project root: the sdist, then the wheel
    built from that sdist (so the sdist must hold all it needs)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([str(BIN / "pyproject-build"), "--outdir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_the_sdist_holds_what_a_build_needs(dist: Path) -> None:
    (sdist,) = dist.glob("saga_supervisor-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for needed in ("build.py", "setup.py", "pyproject.toml", "LICENSE", "README.md",
                   "csrc/sagashm.c", "csrc/sagashm.h", "supervisor/__init__.py",
                   "supervisor/_engine/loop.py", "supervisor/py.typed",
                   "supervisor/_sagashm.pyi", "docs/architecture.md", "tests/conftest.py",
                   "tests/sagas.py"):
        assert needed in names, needed
    assert not any(n.endswith(".so") for n in names)


def test_one_abi3_wheel_installs_in_a_fresh_venv_and_runs_the_demo(dist: Path,
                                                                   tmp_path: Path) -> None:
    (wheel,) = dist.glob("saga_supervisor-*.whl")
    assert "-cp310-abi3-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        so = [n for n in z.namelist() if n.endswith(".so")]
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    assert so == ["supervisor/_sagashm.abi3.so"]
    audit = subprocess.run([str(BIN / "abi3audit"), "--strict", "--assume-minimum-abi3", "3.10",
                            str(wheel)], capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0, audit.stdout + audit.stderr  # only the limited API is used
    assert "License-Expression: MIT" in meta and "Requires-Python: >=3.10" in meta
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q",
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    run = tmp_path / "elsewhere"
    run.mkdir()
    demo = subprocess.run([str(env_dir / "bin" / "saga-supervisor"), "demo", "--sagas", "50",
                           "--no-live", "--json"], capture_output=True, text=True,
                          timeout=300, cwd=run, env={k: v for k, v in os.environ.items()
                                                     if k != "PYTHONPATH"})
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert '"health-check": {"completed": 50}' in demo.stdout
    where = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                            "import supervisor; print(supervisor.__file__)"],
                           capture_output=True, text=True, cwd=run)
    assert str(env_dir) in where.stdout  # the installed copy, not the checkout


def test_a_missing_compiler_says_what_to_install(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.so", "__pycache__", "*.egg-info", "saga-data"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                           "-w", str(tmp_path / "w"), str(src)], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "CC": str(tmp_path / "no-such-cc")})
    assert proc.returncode != 0
    proc.stderr += proc.stdout  # pip relays the build's output on either
    assert "needs a C compiler" in proc.stderr and "apt-get install gcc python3-dev" in \
        proc.stderr, proc.stderr[-2000:]
