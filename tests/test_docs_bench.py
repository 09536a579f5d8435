"""The benchmark commands the README and docs/ give, as a user would paste
them, still select benchmarks: each ``python -m pytest bench/...`` of its
shell blocks (and each ``bench/ab.py ... -k EXPR``, as the pytest run it
makes) is collected (``--collect-only``, not run: a benchmark run is
minutes long, outside the test run), and must collect without error and
select at least one benchmark.  A renamed benchmark or a stale ``-k`` fails
here, not in the hands of whoever follows the docs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# what a collection cannot or need not do: store, compare, print
_DROP_WITH_VALUE = ("--benchmark-json", "--benchmark-save", "--benchmark-compare",
                    "--benchmark-compare-fail", "--benchmark-storage")


def bench_commands(text: str) -> list[list[str]]:
    """Every ``python -m pytest bench...`` command of the shell blocks, as
    argv (continued lines joined, ``&&`` lists split)."""
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True) + ["&&"]
            except ValueError:  # (a line of a heredoc, say: not a command of its own)
                continue
            while "&&" in words:
                argv, words = words[:words.index("&&")], words[words.index("&&") + 1:]
                if len(argv) > 3 and argv[1] == "bench/ab.py" and "-k" in argv[:-1]:
                    # (it runs bench/test_engine_e2e.py with that -k, on two trees)
                    argv = [argv[0], "-m", "pytest", "bench/test_engine_e2e.py", "-k",
                            argv[argv.index("-k") + 1]]
                if len(argv) > 3 and argv[1:3] == ["-m", "pytest"] and \
                        argv[3].startswith("bench") and argv not in out:
                    out.append(argv)
    return out


def _all_commands() -> list[list[str]]:
    out: list[list[str]] = []
    for doc in DOCS:
        out += [argv for argv in bench_commands(doc.read_text()) if argv not in out]
    return out


def _for_collection(argv: list[str]) -> list[str]:
    args = [sys.executable]
    for a in argv[1:]:
        if a == "-s" or a.split("=", 1)[0] in _DROP_WITH_VALUE:
            continue
        args.append(a)
    return args + ["--collect-only", "-q"]


def test_the_docs_give_benchmark_commands() -> None:
    commands = _all_commands()
    assert len(commands) >= 6, commands  # (the parser finds them: the test below means something)
    assert any("-k" in c for c in commands)


@pytest.mark.parametrize("argv", _all_commands(),
                         ids=lambda argv: " ".join(argv[3:])[:60])
def test_a_documented_benchmark_command_selects_benchmarks(argv: list[str]) -> None:
    run = subprocess.run(_for_collection(argv), cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    got = re.search(r"(\d+)(?:/\d+)? tests? collected", run.stdout)
    assert got is not None and int(got.group(1)) >= 1, run.stdout[-2000:]
