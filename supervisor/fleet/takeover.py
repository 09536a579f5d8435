"""Taking a dead node's sagas over: the portable kinds' (a fleet on PostgreSQL).

A kind is *host-bound* unless registered ``portable=True``: its sagas wait
for their node to come back under its name.  A portable kind's sagas on a
node whose lease expired (by the database's clock) are taken over by the
live nodes that registered the kind, from their lease threads:

- **Claimed in chunks,** one transaction each: the taker's own fence first
  (a fenced taker takes nothing), then the dead node's row locked
  (``FOR UPDATE SKIP LOCKED``: takers share the dead nodes out; a node that
  starts again under that name waits for the lock, then finds them gone),
  its epoch bumped (were it only paused, it is fenced: it never commits
  again), then up to ``CHUNK`` of its unfinished sagas of the taker's
  portable kinds re-owned (``node_no``) under the taker, their rows
  returned.
- **Replayed** on the taker's loop from the log, as at a start: the saga
  rebuilt from its input snapshot, its logged steps replayed, the open step
  re-issued to the taker's host at its logged attempt; a queued saga joins
  the taker's queue for its kind.
- **Idempotent:** a saga is re-owned once (the update's condition is its
  owner), and nothing but the owner changes in that transaction; a taker that
  dies after it (before or during the replay) is a dead node like any other,
  whose sagas are taken over in their turn, or recovered by its own return.
"""

from __future__ import annotations

from typing import Any

from supervisor.fleet.cancel import UNFINISHED
from supervisor.store.batch import Unfinished as Row

CHUNK = 256  # sagas re-owned per transaction
CHUNKS = 8  # transactions per call: a big dead node is shared out among the takers


_DEAD = (
    "SELECT n.node_no, n.name FROM saga_node n WHERE n.node_no <> %s AND "
    "n.lease_until < now() AND EXISTS (SELECT 1 FROM saga s WHERE s.node_no = n.node_no "
    f"AND s.state IN {UNFINISHED} AND s.name = ANY(%s)) ORDER BY n.lease_until "
    "LIMIT 1 FOR UPDATE OF n SKIP LOCKED")
_TAKE = (
    "UPDATE saga SET node_no = %s WHERE saga_id IN (SELECT saga_id FROM saga WHERE node_no "
    f"= %s AND state IN {UNFINISHED} AND name = ANY(%s) ORDER BY saga_id LIMIT %s "
    "FOR UPDATE SKIP LOCKED) RETURNING saga_id, name, coalesce(queued_at, started_at), "
    "input_json, state, idem_key, coalesce(queue_seq, 0)")


def take_over(conn: Any, fence: tuple[str, tuple[Any, ...]], me: int, kinds: list[str]
              ) -> list[tuple[str, list[Row]]]:
    """On an autocommit connection: up to CHUNKS chunks of the dead nodes'
    sagas of `kinds`, re-owned by node `me` (whose fence statement is
    `fence`), as (dead node's name, its rows in the order a start resumes
    them: running first, then queued in their queue's order)."""
    taken: list[tuple[str, list[Row]]] = []
    for _ in range(CHUNKS):
        with conn.transaction():
            conn.execute(*fence)
            dead = conn.execute(_DEAD, (me, kinds)).fetchone()
            if dead is None:
                break
            node_no, name = dead
            conn.execute("UPDATE saga_node SET epoch = epoch + 1 WHERE node_no = %s",
                         (node_no,))
            rows = conn.execute(_TAKE, (me, node_no, kinds, CHUNK)).fetchall()
        rows.sort(key=lambda r: (r[4] == "queued", int(r[6]), int(r[0])))
        taken.append((str(name), [(int(r[0]), str(r[1]), float(r[2]), r[3], str(r[4]), r[5])
                                  for r in rows]))
    return taken
