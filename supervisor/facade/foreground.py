"""Running a supervisor in the foreground until a signal: ``serve()``."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("supervisor.facade")


class Servable(Protocol):
    @property
    def state(self) -> str: ...

    @property
    def error(self) -> BaseException | None: ...

    def start(self) -> Any: ...

    def stop(self, drain: bool = False, timeout: float = 5.0) -> None: ...


def serve_until_signal(sup: Servable, drain_timeout: float,
                       ready: Callable[[], Any] | None = None) -> int:
    """Start `sup` if new, run until SIGTERM or SIGINT (main thread only) or
    until it stops on its own, then stop it, draining for up to
    `drain_timeout` seconds.  `ready()` is called once it runs and the
    signals are ours.  0, or 1 if it stopped on an error."""
    if not logging.getLogger().handlers:  # a foreground service: its operator reads this
        logging.basicConfig(level=logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.warning("signal %d: stopping (drain up to %ss)", signum, drain_timeout)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if sup.state == "new":
            sup.start()
        if ready is not None:
            ready()
        while not stop.wait(0.2):
            if sup.state != "running":
                break
        sup.stop(drain=True, timeout=drain_timeout)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 1 if sup.error is not None else 0
