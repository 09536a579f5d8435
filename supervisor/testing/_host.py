"""The scripted host behind :class:`supervisor.testing.FakeHost`:
``python -m supervisor.testing._host SCRIPT.json RECORD.jsonl``.  It is the
reference host's protocol machinery with answers taken from the script."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from supervisor import host as reference


class ScriptedHost(reference.ReferenceHost):
    def __init__(self, out_fd: int, script: dict[str, list[dict[str, Any]]],
                 record: str) -> None:
        super().__init__(out_fd)
        self.script = script
        self.used: dict[str, int] = {}
        self.record_fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def handle(self, body: bytes) -> None:
        got = self.command(body)
        if got is None:
            return
        saga_id, step, cmd = got
        os.write(self.record_fd, (json.dumps({"saga_id": saga_id, "step": step,
                                              "attempt": self._attempt, "command": cmd})
                                  + "\n").encode())
        op = cmd.get("op") if isinstance(cmd, dict) else None
        steps = self.script.get(op) if isinstance(op, str) else None
        if not steps:
            rest = {k: v for k, v in cmd.items() if k != "op"} if isinstance(cmd, dict) else cmd
            self.event(saga_id, step, "echo", rest)
            return
        n = self.used.get(op, 0)  # type: ignore[arg-type]
        self.used[op] = n + 1  # type: ignore[index]
        r = steps[min(n, len(steps) - 1)]
        if r.get("silence"):
            return
        after = float(r.get("after", 0.0))
        if "fail" in r:
            self._loop.call_later(after, self.failed, saga_id, step, str(r["fail"]),
                                  self._attempt)
        else:
            self._loop.call_later(after, self.event, saga_id, step, str(r["answer"]),
                                  r.get("data"), self._attempt)


async def _main(script_path: str, record: str) -> int:
    with open(script_path) as f:
        script = json.load(f)
    return await reference._main(sys.stdin.fileno(), sys.stdout.fileno(),
                                 lambda out_fd: ScriptedHost(out_fd, script, record))


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1], sys.argv[2])))
