"""A supervisor on a PostgreSQL log is a *node* of a fleet: its row in
``saga_node`` (number, name, epoch, lease), its ids, its lease and its fence.

- **Number and ids.** The node's number puts its ids in a range of their own,
  ``node_no << 40`` on (2**40 ids a node, 8,191 nodes, every id below 2**53),
  allocated locally by the shared segment as on one machine; the node's
  high-water mark is kept in its row.
- **Epoch.** Starting under a name bumps its epoch: a supervisor still
  running under that name (paused, or cut off) is fenced from then on.
- **Fence.** Every commit begins with ``saga_fence(node, epoch, lease)``,
  which extends the lease only under the node's epoch and fails the
  transaction (SQLSTATE ``SF001``) under another: a fenced node commits
  nothing, and since nothing is sent before its commit, sends nothing new.
- **Lease.** Expiry is decided by the database's clock (``lease_until``,
  ``now()``).  A thread renews it every lease/3; the node itself keeps, by
  its own monotonic clock, how long its last renewal holds (the lease less a
  tenth, counted from before the renewal was sent), and past that it stops
  before sending anything (:meth:`NodeLease.check`): a node paused past its
  lease (SIGSTOP, a long GC, a VM freeze) or cut off from the database stops
  on its own, before anyone else could take its sagas.

Taking a dead node's sagas over is :mod:`supervisor.fleet.takeover`; cancel
from anywhere and orphan timeouts are :mod:`supervisor.fleet.cancel`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Protocol

from supervisor.common.ratelimit import RateLimitedLog
from supervisor.errors import FencedError, LogError

log = logging.getLogger(__name__)
_warn = RateLimitedLog(log, 2.0)  # a failed renewal is tried again every 0.2 s

ID_BITS = 40  # ids of node n: [n << 40, (n + 1) << 40)
MAX_NODES = (1 << (53 - ID_BITS)) - 1  # every id below 2**53
FENCED = "SF001"  # saga_fence's SQLSTATE

_LOOKUP = """
INSERT INTO saga_node(name, epoch, lease_until, started_at) VALUES (%s, 0, now(), now())
ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING node_no
"""
_CLAIM = """
UPDATE saga_node SET epoch = epoch + 1, lease_until = now() + make_interval(secs => %s),
    pid = %s, host = %s, version = %s, started_at = now()
WHERE node_no = %s RETURNING epoch
"""


class FleetOwner(Protocol):
    """What a node's lease thread hands work to: the engine's fleet side."""

    orphans: dict[str, float]  # kind -> orphan_timeout (host-bound kinds)
    portable: set[str]  # kinds taken over from dead nodes
    fleet_limits: dict[str, int]  # kind -> its limit across the fleet

    def cancel_from_afar(self, saga_id: int, reason: str) -> None: ...

    def adopt(self, node: str, rows: list[Any]) -> None:
        """Sagas taken over from dead node `node` (re-owned in the log):
        resume them; called with no rows while some wait for a claim slot."""

    def grant(self, saga_ids: list[int]) -> None:
        """Queued sagas of fleet-limited kinds that hold a slot: start them."""

    @property
    def waiting(self) -> bool:
        """Taken-over sagas wait for a claim slot: call adopt() again."""


class NodeLease:
    """This supervisor's node: looked up when the log opens, claimed when its
    run begins, renewed by a thread of its own, checked before anything
    leaves (see the module)."""

    def __init__(self, conn: Any, path: str, name: str, lease: float) -> None:
        """Find (or add) `name`'s row on `conn`: its number, hence its ids.
        Nothing is fenced yet: the data dir's lock is not taken (see claim)."""
        self.path, self.name, self.lease = path, name, lease
        self.margin = lease / 10
        with conn.transaction():
            self.node_no = int(conn.execute(_LOOKUP, (name,)).fetchone()[0])
        if self.node_no > MAX_NODES:
            raise LogError(path, f"node {name!r} would be number {self.node_no}: a log "
                           f"holds at most {MAX_NODES} nodes (ids stay below 2**53)")
        self.base = self.node_no << ID_BITS
        self.epoch = 0
        self.ok_until = 0.0
        self.fenced: FencedError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self, conn: Any) -> None:
        """In the caller's transaction, once this supervisor holds its data
        dir: the next epoch (fencing whoever ran under the name before), a
        fresh lease, and the sagas of the days before nodes."""
        from supervisor import __version__

        began = time.monotonic()
        before = conn.execute("SELECT lease_until > now() AND epoch > 0, pid, host FROM "
                              "saga_node WHERE node_no = %s FOR UPDATE",
                              (self.node_no,)).fetchone()
        self.epoch = int(conn.execute(_CLAIM, (self.lease, os.getpid(), socket.gethostname(),
                                               __version__, self.node_no)).fetchone()[0])
        conn.execute("UPDATE saga SET node_no = %s WHERE node_no IS NULL AND state IN "
                     "('queued', 'running', 'compensating')", (self.node_no,))
        # keys its earlier runs claimed for sagas they never logged are free again
        conn.execute("DELETE FROM saga_key k WHERE k.node_no = %s AND NOT EXISTS (SELECT 1 "
                     "FROM saga s WHERE s.saga_id = k.saga_id)", (self.node_no,))
        if before is not None and before[0]:
            log.warning("node %r was still leased (pid %s on %s): it is fenced now (epoch "
                        "%d)", self.name, before[1], before[2], self.epoch)
        self.ok_until = began + self.lease - self.margin

    # -- the fence ------------------------------------------------------------------

    def fence_sql(self) -> tuple[str, tuple[Any, ...]]:
        """The statement every commit begins with."""
        return "SELECT saga_fence(%s, %s, %s)", (self.node_no, self.epoch, self.lease)

    def renewed(self, began: float) -> None:
        """A commit or renewal sent at monotonic `began` went through.  Sent
        after the lease had run out by this node's clock, it renews nothing:
        the node was paused or cut off past its lease, and stops."""
        if began > self.ok_until:
            self._lapsed(began - self.ok_until)
            return
        self.ok_until = max(self.ok_until, began + self.lease - self.margin)

    def _lapsed(self, late: float) -> None:
        if self.fenced is None:
            self.fenced = FencedError(
                self.path, f"node {self.name!r} could not renew its lease in time ({late:.1f}s "
                f"past the {self.lease}s it holds, less a tenth: paused, or cut off from the "
                "database); it stops before sending anything, so that nothing it sends can "
                "race whoever takes its sagas")

    def fenced_error(self, exc: BaseException) -> FencedError | None:
        """`exc` as a FencedError if it is the fence's; else None."""
        if getattr(exc, "sqlstate", None) != FENCED:
            return None
        self.fenced = FencedError(self.path, f"node {self.name!r} (number {self.node_no}) is "
                                  f"fenced: epoch {self.epoch} is no longer its own (another "
                                  "supervisor started under its name, or its sagas were "
                                  "ended by another node), or its lease ran out by the "
                                  "database's clock; it stops")
        return self.fenced

    def check(self) -> None:
        """Before anything leaves: raise FencedError if the node was fenced,
        or if its lease may have run out by its own clock."""
        if self.fenced is not None:
            raise self.fenced
        late = time.monotonic() - self.ok_until
        if late > 0:
            self._lapsed(late)
            assert self.fenced is not None
            raise self.fenced

    # -- the renewal thread ----------------------------------------------------------

    def start(self, url: str, owner: FleetOwner | None = None) -> None:
        """Renew from now on; with an `owner` (the engine), also hand it the
        cancels requested from anywhere and the sagas of its portable kinds
        taken over from dead nodes, and end its orphan_timeout kinds' sagas on
        dead nodes (see :mod:`supervisor.fleet.cancel`,
        :mod:`supervisor.fleet.takeover`)."""
        from supervisor.fleet.cancel import CancelPoll

        from supervisor.fleet.limit import Slots

        cancels = CancelPoll(self.node_no, owner.cancel_from_afar) if owner else None
        slots = Slots(self.node_no, owner.grant) if owner else None
        self._thread = threading.Thread(target=self._renew, args=(url, cancels, slots, owner),
                                        daemon=True, name="saga-node-lease")
        self._thread.start()

    def _renew(self, url: str, cancels: Any, slots: Any, owner: FleetOwner | None) -> None:
        """Renew every lease/3 (and reap orphans then); between renewals,
        look for cancel requests and dead nodes' sagas to take over every
        second, and for cancels at once when one is announced (LISTEN)."""
        import psycopg

        from supervisor.fleet.cancel import reap_orphans
        from supervisor.fleet.takeover import take_over
        from supervisor.store.pg_connect import network, server_gives_up

        conn: Any = None
        sql, params = self.fence_sql()
        every = min(1.0, self.lease / 3)
        renew_at = time.monotonic() + self.lease / 3
        while not self._stop.is_set():
            began, failed = time.monotonic(), False
            if began > self.ok_until:  # (woken after a pause past the lease)
                self._lapsed(began - self.ok_until)
            if self.fenced is not None:
                break
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(url, autocommit=True,
                                           connect_timeout=max(1, int(self.lease / 3)),
                                           **network(self.lease / 3))
                    # never wait long on a lock (renewals come first), and if this
                    # node is paused inside a transaction, the server ends it soon,
                    # so that its locks hold up nobody else for long
                    server_gives_up(conn, self.lease / 4, "lock_timeout")
                    if cancels is not None:
                        conn.execute("LISTEN saga_cancel")
                        conn.execute("LISTEN saga_slot")
                if began >= renew_at:
                    conn.execute(sql, params)
                    self.renewed(began)
                    renew_at = began + self.lease / 3
                    if owner is not None and owner.orphans:
                        reap_orphans(conn, self.node_no, dict(owner.orphans))
                if owner is not None and owner.portable:
                    taken = take_over(conn, (sql, params), self.node_no, sorted(owner.portable))
                    self.renewed(began)  # (its fence renewed the lease)
                    for dead, rows in taken:
                        if rows:
                            log.warning("node %r: took over %d saga(s) of dead node %r",
                                        self.name, len(rows), dead)
                            owner.adopt(dead, rows)
                    if owner.waiting:
                        owner.adopt("", [])
                if owner is not None and owner.fleet_limits:
                    slots.run(conn, (sql, params), dict(owner.fleet_limits))
                    self.renewed(began)  # (its fence renewed the lease)
                if cancels is not None:
                    cancels.poll(conn)
                    # a wake-up only (a notification can be lost: the poll is the rule)
                    for _ in conn.notifies(timeout=max(0.0, min(every, renew_at -
                                                                 time.monotonic())),
                                           stop_after=1):
                        pass
                    continue
            except psycopg.Error as exc:
                failed = True
                if self.fenced_error(exc) is not None:
                    log.error("%s", self.fenced)
                    break
                _warn.warning("renew", "node %r: could not renew its lease: %s", self.name,
                              str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            except Exception as exc:  # the loop is gone (NotRunningError): renewals go on
                log.debug("node %r: a cancel was not handed over: %s", self.name, exc)
            self._stop.wait(max(0.2 if failed else 0.0,
                                min(every if cancels is not None else self.lease / 3,
                                    renew_at - time.monotonic())))
        if conn is not None:
            conn.close()

    def stop(self, conn: Any) -> None:
        """A clean stop: the renewals end, and the lease with them (on `conn`,
        best effort), so that the node is seen gone at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.epoch and self.fenced is None:
            try:
                with conn.transaction():
                    conn.execute("UPDATE saga_node SET lease_until = least(lease_until, "
                                 "now()) WHERE node_no = %s AND epoch = %s",
                                 (self.node_no, self.epoch))
            except Exception as exc:  # psycopg's: the server is gone; the lease ends anyway
                log.debug("node %r: lease not released: %s", self.name, exc)
