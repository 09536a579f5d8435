"""How a batch of the saga log is written in PostgreSQL's dialect (used by
:class:`supervisor.store.pg.PgLog`, measured by bench/test_pg.py)."""

from __future__ import annotations

import json
from typing import Any

from supervisor.fleet.limit import QUEUE_LOCK_SHARED
from supervisor.fleet.node import NodeLease
from supervisor.store.batch import Batch

_RAISE_MARK = "UPDATE saga_meta SET value = greatest(value, %s) WHERE key = 'next_id'"
_RAISE_NODE_MARK = "UPDATE saga_node SET next_id = greatest(next_id, %s) WHERE node_no = %s"



# The hot rows (a saga's start and end, a step's start and end) go as one
# statement per table over one JSON array of the rows: the server parses and
# plans once per batch instead of once per row, and the client encodes the
# rows with json.dumps (C) instead of a parameter per value (bench/test_pg.py
# measures executemany, arrays and COPY).  Used when no key repeats within the
# batch; else executemany, whose rows apply in order.
_ROWS = " FROM json_array_elements(%s::json) r"
_INSERT_SAGAS = ("INSERT INTO saga(saga_id, name, state, started_at, input_json, node_no) "
                 "SELECT (r->>0)::bigint, r->>1, 'running', (r->>2)::float8, r->>3, %s::int" +
                 _ROWS +
                 " ON CONFLICT DO NOTHING")
_INSERT_STEPS = ("INSERT INTO saga_step(saga_id, step_index, name, state, cmd_json, target, "
                 "started_at) SELECT (r->>0)::bigint, (r->>1)::int, r->>2, 'pending', r->>3, "
                 "r->>4, (r->>5)::float8" + _ROWS + " ON CONFLICT DO NOTHING")
_END_STEPS = ("UPDATE saga_step s SET state = u.r->>0, ended_at = (u.r->>1)::float8, "
              "output_json = u.r->>2, failure_reason = u.r->>3 FROM (SELECT r" + _ROWS +
              ") u WHERE s.saga_id = (u.r->>4)::bigint AND s.step_index = (u.r->>5)::int")
_END_SAGAS = ("UPDATE saga s SET state = u.r->>0, ended_at = (u.r->>1)::float8, "
              "failure_reason = u.r->>2 FROM (SELECT r" + _ROWS + ") u "
              "WHERE s.saga_id = (u.r->>3)::bigint")


def _bulk(cur: Any, rows: list[tuple[Any, ...]], key: tuple[int, ...], arrays: str,
          each: str, extra: tuple[Any, ...] = ()) -> None:
    """`rows` with one statement over their JSON (`arrays`), or row by row
    (`each`) when a key (the columns `key`) repeats: the JSON's rows apply in
    no set order, executemany's in the batch's.  `extra`: parameters of
    every row (before the JSON in `arrays`, after the row's own in `each`)."""
    if len(rows) > 1 and len({tuple(r[k] for k in key) for r in rows}) == len(rows):
        cur.execute(arrays, (*extra, json.dumps(rows)))
    else:
        cur.executemany(each, [(*r, *extra) for r in rows] if extra else rows)


def raise_mark(c: Any, mark: int, node: NodeLease | None) -> None:
    """The ids' high-water mark: the log's (read by wait()'s fallback) and
    the node's (where its next run starts)."""
    c.execute(_RAISE_MARK, (mark,))
    if node is not None:
        c.execute(_RAISE_NODE_MARK, (mark, node.node_no))


def write_batch(cur: Any, b: Batch, node: NodeLease | None) -> None:
    """One turn's rows (or several turns', merged) on `cur`, in a
    transaction of the caller's: the node's fence first, then each kind of
    row in an order in which a later turn's rows never need to go first (see
    :meth:`supervisor.store.sqlite.Batch.extend`).  Every row is written so that the
    batch can run again after a lost connection and change nothing."""
    many = cur.executemany
    node_no = node.node_no if node is not None else None
    if node is not None:  # the fence: under another epoch, nothing below lands
        cur.execute(*node.fence_sql())
    if b.id_mark:
        raise_mark(cur, b.id_mark, node)
    if b.sagas:
        _bulk(cur, b.sagas, (0,), _INSERT_SAGAS, "INSERT INTO saga(saga_id, name, state, "
              "started_at, input_json, node_no) VALUES (%s, %s, 'running', %s, %s, %s) "
              "ON CONFLICT DO NOTHING", (node_no,))
    if b.queued:
        # (the fleet's one order: a sequence, not this node's counter).  Each
        # kind's queue lock, shared, first: a number is taken only while it
        # is held, and a granter's barrier takes it exclusively, so that it
        # never grants a number while an earlier one is still in flight
        for name in sorted({q[1] for q in b.queued}):
            cur.execute(QUEUE_LOCK_SHARED, (name,))
        many("INSERT INTO saga(saga_id, name, state, started_at, input_json, queued_at, "
             "queue_seq, node_no) VALUES (%s, %s, 'queued', %s, %s, %s, "
             "nextval('saga_queue_seq'), %s) ON CONFLICT DO NOTHING",
             [(i, n, at, js, at, node_no) for i, n, at, js, _seq in b.queued])
    if b.saga_keys:
        many("UPDATE saga SET idem_key = %s WHERE saga_id = %s", b.saga_keys)
    if b.dequeued:
        many("UPDATE saga SET state = 'running', started_at = %s WHERE saga_id = %s",
             b.dequeued)
    if b.steps:
        _bulk(cur, b.steps, (0, 1), _INSERT_STEPS, "INSERT INTO saga_step(saga_id, "
              "step_index, name, state, cmd_json, target, started_at) VALUES (%s, %s, %s, "
              "'pending', %s, %s, %s) ON CONFLICT DO NOTHING")
    if b.attempts:
        many("INSERT INTO saga_step_attempt VALUES (%s, %s, %s, %s, %s, %s, %s) "
             "ON CONFLICT (saga_id, step_index, attempt) DO UPDATE SET "
             "started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at, "
             "failure_reason = EXCLUDED.failure_reason, state = EXCLUDED.state",
             b.attempts)
    if b.step_attempts:
        many("UPDATE saga_step SET attempt = %s WHERE saga_id = %s AND step_index = %s",
             b.step_attempts)
    if b.step_ends:
        _bulk(cur, b.step_ends, (4, 5), _END_STEPS, "UPDATE saga_step SET state = %s, "
              "ended_at = %s, output_json = %s, failure_reason = %s WHERE saga_id = %s "
              "AND step_index = %s")
    if b.step_comps:
        many("UPDATE saga_step SET state = %s, compensation_json = COALESCE(%s, "
             "compensation_json) WHERE saga_id = %s AND step_index = %s", b.step_comps)
    if b.saga_states:
        many("UPDATE saga SET state = %s WHERE saga_id = %s", b.saga_states)
    if b.saga_ends:
        failed = [(e[1], e[2] or e[0], e[3]) for e in b.saga_ends if e[0] != "completed"]
        if failed:
            many("UPDATE saga_step SET state = 'failed', ended_at = %s, "
                 "failure_reason = %s WHERE saga_id = %s AND state = 'pending'", failed)
        _bulk(cur, b.saga_ends, (3,), _END_SAGAS, "UPDATE saga SET state = %s, "
              "ended_at = %s, failure_reason = %s WHERE saga_id = %s")
    if b.wake_slots:  # (delivered at the commit: the nodes grant the freed slots)
        cur.execute("SELECT pg_notify('saga_slot', '')")
