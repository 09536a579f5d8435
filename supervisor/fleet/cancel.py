"""Cancel from anywhere in a fleet: ``saga-supervisor cancel ID --log URL``.

- **The owner is live.** The request is a row in ``saga_cancel`` and a
  ``NOTIFY saga_cancel`` (a wake-up only: a notification can be lost, so the
  owner also polls).  The owner's lease thread finds the requests for its
  sagas (:class:`CancelPoll`) and hands each to its loop as a ``cancel()``
  of its own, so the outcome is decided there as on one machine: the saga
  fails ``cancelled: REASON``, or it had ended first.  A request is removed
  once its saga has ended.
- **The owner is dead** (its lease expired by the database's clock): nobody
  runs the saga, so the cancel is decided at once, in one transaction: the
  node's epoch is bumped first (a paused node that resumes is fenced, and
  never sends anything new), then the saga and its open steps fail
  ``cancelled: REASON``.  A supervisor that starts again under the node's
  name, or a node taking its sagas over, finds it ended and never runs it.
  (The saga's row is locked meanwhile: a takeover re-owns it before or
  after, never during.)

A kind registered with ``orphan_timeout=T`` has its sagas on a node whose
lease expired more than T seconds ago ended the same way by any live node
that registered it (:func:`reap_orphans`): ``orphaned: ...``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

UNFINISHED = "('queued', 'running', 'compensating')"
_PENDING = ("SELECT c.saga_id, c.reason FROM saga_cancel c JOIN saga s USING (saga_id) "
            f"WHERE s.node_no = %s AND s.state IN {UNFINISHED}")
_DONE = ("DELETE FROM saga_cancel c USING saga s WHERE c.saga_id = s.saga_id AND "
         f"s.state NOT IN {UNFINISHED}")


class CancelPoll:
    """The owner's side: requests for this node's sagas, each handed once
    to `post(saga_id, reason)` (the loop's cancel)."""

    def __init__(self, node_no: int, post: Callable[[int, str], None]) -> None:
        self.node_no = node_no
        self.post = post
        self.posted: set[int] = set()

    def poll(self, conn: Any) -> None:
        """On an autocommit connection: hand over what is new, forget what
        has ended."""
        rows = conn.execute(_PENDING, (self.node_no,)).fetchall()
        conn.execute(_DONE)
        pending = {int(sid) for sid, _ in rows}
        for sid, reason in rows:
            if int(sid) not in self.posted:
                self.post(int(sid), str(reason))
        self.posted = pending


def request(url: str, saga_id: int, reason: str, timeout: float) -> tuple[bool, str]:
    """Cancel `saga_id` wherever it runs; (decided by this request, what
    happened).  Raises LogError (or SupervisorError) if the log is out of
    reach."""
    from supervisor.store.pg_read import Reader
    from supervisor.store.pg_connect import connect

    why = f"cancelled: {reason}"
    conn = connect(url)
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT s.state, s.node_no, n.name, coalesce(n.lease_until > now(), false) "
                "FROM saga s LEFT JOIN saga_node n USING (node_no) WHERE s.saga_id = %s "
                "FOR UPDATE OF s", (saga_id,)).fetchone()
            if row is None:
                return False, f"no saga {saga_id} in the log"
            state, node_no, name, live = row
            if state not in ("queued", "running", "compensating"):
                return False, f"saga {saga_id} had already ended: {state}"
            if not live:  # host-bound on a dead node: decided here, once it is fenced
                fenced = conn.execute(
                    "UPDATE saga_node SET epoch = epoch + 1 WHERE node_no = %s AND "
                    "lease_until < now() RETURNING epoch", (node_no,)).fetchone()
                if fenced is not None or node_no is None:
                    _end_on_dead_node(conn, node_no, "saga_id = %s", (saga_id,), why)
                    return True, (f"saga {saga_id} {why} (its node {name!r} is down: fenced "
                                  f"at epoch {fenced[0] if fenced else '-'}; it never runs "
                                  "again)")
            conn.execute("INSERT INTO saga_cancel(saga_id, reason) VALUES (%s, %s) "
                         "ON CONFLICT (saga_id) DO NOTHING", (saga_id, reason))
            conn.execute("SELECT pg_notify('saga_cancel', %s)", (str(node_no),))
    finally:
        conn.close()
    reader = Reader(url)  # the owner decides on its loop: wait for the outcome
    try:
        deadline = time.monotonic() + timeout
        while True:
            state, ended_why = reader.execute("SELECT state, failure_reason FROM saga WHERE "
                                              "saga_id = ?", (saga_id,)).fetchone()
            if state not in ("queued", "running", "compensating"):
                if state == "failed" and ended_why == why:
                    return True, f"saga {saga_id} {why} (by its node {name!r})"
                return False, f"saga {saga_id} had already ended: {state}" + (
                    f" ({ended_why})" if ended_why else "")
            if time.monotonic() >= deadline:
                return False, (f"saga {saga_id}: cancel requested; its node {name!r} has not "
                               f"decided within {timeout}s (it will when it can)")
            time.sleep(0.05)
    finally:
        reader.close()


def _end_on_dead_node(conn: Any, node_no: int | None, where: str,
                      params: tuple[Any, ...], why: str) -> list[int]:
    """In the caller's transaction, with `node_no`'s epoch already bumped:
    fail its unfinished sagas matching `where`, and their open steps."""
    now = time.time()
    ids = [int(r[0]) for r in conn.execute(
        f"UPDATE saga SET state = 'failed', ended_at = %s, failure_reason = %s WHERE "
        f"node_no IS NOT DISTINCT FROM %s AND state IN {UNFINISHED} AND {where} "
        "RETURNING saga_id",
        (now, why, node_no, *params)).fetchall()]
    if ids:
        conn.execute("UPDATE saga_step SET state = 'failed', ended_at = %s, failure_reason "
                     "= %s WHERE saga_id = ANY(%s) AND state = 'pending'", (now, why, ids))
    return ids


def reap_orphans(conn: Any, me: int, orphans: dict[str, float]) -> int:
    """End the sagas of each kind in `orphans` (kind -> orphan_timeout) on
    every other node whose lease expired that long ago: that node is fenced
    first (its epoch bumped), in the same transaction.  Nodes another reaper
    holds are skipped (SKIP LOCKED); running twice changes nothing.  How
    many sagas it ended."""
    ended = 0
    for kind, after in orphans.items():
        with conn.transaction():
            dead = conn.execute(
                "SELECT n.node_no, n.name FROM saga_node n WHERE n.node_no <> %s AND "
                "n.lease_until < now() - make_interval(secs => %s) AND EXISTS (SELECT 1 "
                f"FROM saga s WHERE s.node_no = n.node_no AND s.name = %s AND s.state IN "
                f"{UNFINISHED}) FOR UPDATE SKIP LOCKED", (me, after, kind)).fetchall()
            for node_no, name in dead:
                conn.execute("UPDATE saga_node SET epoch = epoch + 1 WHERE node_no = %s",
                             (node_no,))
                ended += len(_end_on_dead_node(
                    conn, node_no, "name = %s", (kind,),
                    f"orphaned: its node {name!r} was gone for more than {after}s"))
    return ended

