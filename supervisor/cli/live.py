"""The CLI's commands that talk to a running supervisor over its control
socket: ``events``, ``cancel``, ``publish``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from supervisor.cli.util import EXIT_FAIL, EXIT_NONE, EXIT_OK, EXIT_USAGE, iso, not_running


def _client(data_dir: str) -> Any:
    from supervisor.clients.client import SagaClient
    from supervisor.errors import SupervisorError

    try:
        return SagaClient(data_dir)
    except SupervisorError as exc:  # none running, or a segment left by a dead one
        print(not_running(data_dir, str(exc)), file=sys.stderr)
        return None


def cmd_events(args: argparse.Namespace) -> int:
    client = _client(args.data_dir)
    if client is None:
        return EXIT_NONE
    seen = 0
    try:
        for ev in client.events(timeout=args.idle):
            if ev.version <= args.since_version:
                continue
            at = iso(time.time())
            if args.json:
                print(json.dumps({"time": at, "version": ev.version, "kind": ev.kind,
                                  "saga_id": ev.saga_id, "step": ev.step, "data": ev.data},
                                 default=repr), flush=True)
            else:
                about = "" if ev.saga_id is None else f"saga={ev.saga_id} " + (
                    "" if ev.step is None else f"step={ev.step} ")
                print(f"{at} v{ev.version:<8} {ev.kind:<18} {about}"
                      f"{json.dumps(ev.data, default=repr)}", flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    if args.id < 1:
        print(f"a saga id is >= 1, got {args.id}", file=sys.stderr)
        return EXIT_USAGE
    client = _client(args.data_dir)
    if client is None:
        return EXIT_NONE
    try:
        try:
            won = client.cancel(args.id, args.reason)
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAIL
        if won:
            print(f"saga {args.id} cancelled: {args.reason}")
            return EXIT_OK
        o = client.wait(args.id, timeout=10)
        print(f"saga {args.id} had already ended: {o.state}"
              + (f" ({o.reason})" if o.reason else ""), file=sys.stderr)
        return EXIT_FAIL
    finally:
        client.close()


def cmd_publish(args: argparse.Namespace) -> int:
    from supervisor.saga import Event

    try:
        data = json.loads(args.data)
    except ValueError as exc:
        print(f"--data is not JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    client = _client(args.data_dir)
    if client is None:
        return EXIT_NONE
    try:
        client.publish(Event(args.kind, data))
    except (TypeError, ValueError) as exc:  # the event itself (an empty kind, too large)
        print(f"cannot publish: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        client.close()
    print(f"published {args.kind}")
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    from supervisor.errors import SupervisorError

    client = _client(args.data_dir)
    if client is None:
        return EXIT_NONE
    try:
        text = client.metrics()
    except (SupervisorError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAIL
    finally:
        client.close()
    sys.stdout.write(text)
    return EXIT_OK
