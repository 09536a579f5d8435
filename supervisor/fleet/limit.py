"""Fleet-wide per-kind limits (a fleet on PostgreSQL):
``register_kind(K, fleet_limit=N)`` on every node that runs K.

At most N sagas of K run across the fleet at any instant.  Every spawn of K
is queued (logged ``queued``, its ``queue_seq`` from one sequence for the
fleet: one FIFO), and a saga starts only once it holds one of K's N rows in
``saga_slot``:

- **Granting** is one transaction per kind, run by any live node's lease
  thread (serialized by an advisory lock on the kind, which a node only
  tries: one that finds it taken leaves the grant to its holder, and never
  waits, so that its renewals never queue behind another node, even one
  paused holding it): its own fence first; then a barrier on the kind's
  queue lock (:func:`_settled`), so that no number is granted while a lower
  one is still in flight on any node;
  the slots of sagas that have ended are released; the free ones are granted
  to the oldest queued sagas of K in the fleet (``queue_seq`` order, up to
  the barrier's number) whose nodes are live; a ``NOTIFY saga_slot`` tells
  the owners.
- **Starting:** each node looks for its queued sagas that hold a slot and
  hands them to its loop, which starts them (their row becomes ``running``).
- **Waking:** a commit that queues or ends a saga of a fleet-limited kind
  ends with ``NOTIFY saga_slot`` (delivered at its commit), so the nodes
  grant at once; they also poll every second (a notification can be lost).

A slot is released only once its saga's end is committed, and granted
before the saga's start is, so the log's [started_at, ended_at] of K's
sagas never overlap more than N at once.  A dead node's slots come back when
its sagas end: taken over (portable kinds), failed (``orphan_timeout``,
cancel from anywhere) or recovered by its return.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from supervisor.fleet.cancel import UNFINISHED

# a kind's queue lock: held shared by every transaction that numbers queued
# sagas of the kind (supervisor.store.pg_rows), exclusively by its granter
QUEUE_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(7405318, hashtext(%s))"
_QUEUE_LOCK = "SELECT pg_advisory_lock(7405318, hashtext(%s))"
_QUEUE_UNLOCK = "SELECT pg_advisory_unlock(7405318, hashtext(%s))"
_RELEASE = ("DELETE FROM saga_slot sl WHERE sl.name = %s AND NOT EXISTS (SELECT 1 FROM saga "
            f"s WHERE s.saga_id = sl.saga_id AND s.state IN {UNFINISHED})")
_GRANT = (
    "INSERT INTO saga_slot(saga_id, name) SELECT s.saga_id, s.name FROM saga s JOIN "
    "saga_node n USING (node_no) WHERE s.name = %s AND s.state = 'queued' AND "
    "s.queue_seq <= %s AND n.lease_until > now() AND NOT EXISTS (SELECT 1 FROM saga_slot "
    "sl WHERE sl.saga_id = s.saga_id) ORDER BY s.queue_seq, s.saga_id LIMIT greatest(0, "
    "%s - (SELECT count(*) FROM saga_slot WHERE name = %s)) RETURNING saga_id")
_MINE = ("SELECT sl.saga_id FROM saga_slot sl JOIN saga s USING (saga_id) WHERE "
         "s.node_no = %s AND s.state = 'queued' AND sl.name = ANY(%s)")


class Slots:
    """A node's side: grant slots for its fleet-limited kinds, and hand the
    loop (`start(ids)`) each of its queued sagas holding one (again after
    AGAIN seconds if it is still queued: the loop ignores what it does not
    hold queued)."""

    AGAIN = 5.0

    def __init__(self, node_no: int, start: Callable[[list[int]], None]) -> None:
        self.node_no = node_no
        self.start = start
        self.handed: dict[int, float] = {}  # saga id -> when (monotonic)

    def run(self, conn: Any, fence: tuple[str, tuple[Any, ...]], limits: dict[str, int]
            ) -> None:
        """On an autocommit connection."""
        for kind, cap in sorted(limits.items()):
            with conn.transaction():
                conn.execute(*fence)
                if not conn.execute("SELECT pg_try_advisory_xact_lock(7405317, hashtext(%s))",
                                    (kind,)).fetchone()[0]:
                    continue  # another node grants them now (never wait: renewals come next)
                settled = _settled(conn, kind)
                if settled is None:
                    continue
                conn.execute(_RELEASE, (kind,))
                if conn.execute(_GRANT, (kind, settled, cap, kind)).fetchall():
                    conn.execute("SELECT pg_notify('saga_slot', '')")
        mine = [int(r[0]) for r in conn.execute(_MINE, (self.node_no, sorted(limits)))]
        now = time.monotonic()
        new = sorted(i for i in mine if now - self.handed.get(i, -1e9) > self.AGAIN)
        if new:
            self.start(new)
        fresh = set(new)
        self.handed = {i: now if i in fresh else self.handed[i] for i in mine}


def _settled(conn: Any, kind: str) -> int | None:
    """The highest queue number below which every number is settled: its
    transaction committed (visible to the grant) or rolled back; None if
    that could not be known within the lease thread's ``lock_timeout``.

    A barrier: the kind's queue lock, taken exclusively, waits for the
    transactions numbering queued sagas of `kind` (each holds it shared from
    before its ``nextval`` to its commit), the sequence's last value is read,
    and the lock is let go at once, so that new numberings wait only that
    long.  Without it, of two nodes' queued sagas the one numbered later
    could commit first and be granted before the other.  A node paused
    inside such a transaction holds the grant up until the server ends its
    transaction (``idle_in_transaction_session_timeout``)."""
    import psycopg

    try:
        with conn.transaction():  # (a savepoint: a timeout leaves the grant's open)
            conn.execute(_QUEUE_LOCK, (kind,))
    except psycopg.errors.LockNotAvailable:
        return None
    try:
        return int(conn.execute("SELECT last_value FROM saga_queue_seq").fetchone()[0])
    finally:
        conn.execute(_QUEUE_UNLOCK, (kind,))
