"""The loop's side of the host: frames in, commands out, and what a death
verdict means for the sagas.  Loop thread only.

:class:`HostLink` moves bytes and returns verdicts; this routes them: frame
bodies to :mod:`.routing`, a death to a restart (open steps re-issued to the
new host, at once or after its backoff, the commands issued meanwhile held
for it) or to failing the sagas that wait on the host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from supervisor._engine.dispatch import Dispatch
from supervisor._engine.host_link import GONE, LATER, RESTARTED, HostLink
from supervisor._engine.timers import HOST_RESTART
from supervisor._engine.records import HostProc
from supervisor._engine.routing import Routing

log = logging.getLogger(__name__)


class HostWatch:
    def __init__(self, link: HostLink, routing: Routing, dispatch: Dispatch,
                 write_health: Callable[[], Any]) -> None:
        self.link = link
        self.routing = routing
        self.dispatch = dispatch
        self.write_health = write_health
        link.timers.on(HOST_RESTART, self._restart_due)

    def _restart_due(self, now: float, due: float, arg: object) -> None:
        """A ``HOST_RESTART`` entry came due (stale: a later backoff replaced
        it, or the host stopped)."""
        if self.link.restart_due(now):
            self.restart()

    def readable(self, h: HostProc) -> None:
        bodies, death = self.link.read(h)
        for body in bodies:
            self.routing.host_frame(h, body)
        self.lost(h, death)

    def writable(self, h: HostProc) -> None:
        self.lost(h, self.link.flush(h))

    def flush(self) -> None:
        h = self.link.host
        if h is not None and h.alive and not h.want_write:
            self.writable(h)

    def send(self, out: list[tuple[int, int, str, bool]]) -> None:
        """A committed turn's host commands: to the host, or held for the one
        that comes after a restart's backoff."""
        if self.link.restart_at is not None:
            self.link.held += out
        else:
            self.dispatch.to_host(self.link.host, out)
            self.flush()

    def lost(self, h: HostProc, why: str | None) -> None:
        """A death verdict (None: no death) for the host: restart or fail."""
        if why is None or not h.alive:
            return
        became = self.link.lost(h, why)
        log.error("%s; %s", why, {RESTARTED: "host restarted, open steps re-issued",
                                  LATER: "host restarts after a backoff, open steps "
                                         "re-issued then",
                                  GONE: "sagas waiting on the host fail"}[became])
        self.routing.host_lost(why, became != GONE)
        if self.link.down is not None:
            self.write_health()  # the probe sees it now, not a tick later

    def restart(self) -> None:
        """A host restart's backoff is over: start it and send it what was
        issued meanwhile (or fail that, if it cannot start)."""
        h, held = self.link.restart_now()
        self.dispatch.to_host(h if h is not None else self.link.host, held)
        if h is not None:
            self.flush()
