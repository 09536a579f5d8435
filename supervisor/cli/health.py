"""``saga-supervisor health``: the liveness probe of a running supervisor,
read from the health file it refreshes (and, with ``--log``, a probe of the
PostgreSQL log beside it)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from supervisor.cli.util import EXIT_FAIL, EXIT_NONE, EXIT_OK, iso, not_running


def cmd_health(args: argparse.Namespace) -> int:
    from supervisor.common.procs import same_process
    from supervisor.paths import DataDir

    store = None
    if args.log:  # the store too: the server, one round trip, what the log holds
        from supervisor.cli.store import probe, store_line

        store = probe(args.log)
        if not args.json:
            print(store_line(store))
    path = DataDir.of(args.data_dir).health_file
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        if args.json and store is not None:
            print(json.dumps({"store": store}))
        print(not_running(args.data_dir, f"no {path}"), file=sys.stderr)
        return EXIT_NONE
    except (OSError, ValueError) as exc:
        print(f"unreadable health file {path}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    me = report.get("supervisor", {})
    pid, started = me.get("pid"), me.get("create_time")
    alive = isinstance(pid, int) and isinstance(started, (int, float)) and \
        same_process(pid, float(started))
    if not alive:
        print(not_running(args.data_dir, f"pid {me.get('pid')} in {path} is gone"),
              file=sys.stderr)
        return EXIT_NONE
    age = time.time() - float(report.get("time", 0))
    problems = [str(p) for p in report.get("problems", [])]
    if age > args.max_age and me.get("state") == "running":
        problems.append(f"health file is {age:.1f}s old (loop stuck?)")
    if not report.get("healthy"):
        dead = [w["index"] for w in report.get("workers", []) if not w.get("alive")]
        if dead:
            problems.append(f"workers not alive: {dead}")
        host = report.get("host")
        if host is not None and not host.get("alive") and \
                not any(p.startswith("host down") for p in problems):
            problems.append(f"host down: {host.get('death')}")
        if not problems:
            problems.append(f"supervisor state {me.get('state')}")
    if store is not None and "error" in store:
        problems.append(f"log unreachable: {store['error']}")
    if args.json:
        print(json.dumps(_iso_times({**report, "problems": problems, "age": age}
                                    | ({"store": store} if store is not None else {}))))
    else:
        w = report.get("workers", [])
        print(f"supervisor pid {me.get('pid')} {me.get('state')}: "
              f"{me.get('sagas_in_flight')} in flight, {len(w)} workers, "
              f"rss {me.get('rss', 0) // 1024} KiB; "
              + ("healthy" if not problems else "UNHEALTHY: " + "; ".join(problems)))
        mine = report.get("log")
        if isinstance(mine, dict) and mine.get("store") == "postgresql":
            from supervisor.cli.store import store_line

            print("its " + store_line(mine))
    return EXIT_OK if not problems else EXIT_FAIL


def _iso_times(report: dict[str, object]) -> dict[str, object]:
    """The health report with its epoch times (``time``, each process's
    ``create_time``) as ISO 8601, as every time the CLI prints."""
    out = dict(report)
    if isinstance(out.get("time"), (int, float)):
        out["time"] = iso(float(out["time"]))  # type: ignore[arg-type]
    for key in ("supervisor", "host"):
        part = out.get(key)
        if isinstance(part, dict) and isinstance(part.get("create_time"), (int, float)):
            out[key] = {**part, "create_time": iso(float(part["create_time"]))}
    workers = out.get("workers")
    if isinstance(workers, list):
        out["workers"] = [{**w, "create_time": iso(float(w["create_time"]))}
                          if isinstance(w, dict) and isinstance(w.get("create_time"),
                                                                (int, float)) else w
                          for w in workers]
    return out
