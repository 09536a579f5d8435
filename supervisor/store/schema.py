"""The saga log's schema, in each store's dialect.

SQLite: one migration per version, applied in order by
:class:`supervisor.store.sqlite.SagaLog` through ``pragma user_version``.  A log
written by any earlier version is upgraded in place at start; each
migration runs in its own transaction with its version bump.

PostgreSQL (:class:`supervisor.store.pg.PgLog`): the same tables and columns
at the same version (``PG_DDL``, idempotent), the version kept in
``saga_meta``; a later version adds its migration here beside SQLite's."""

from __future__ import annotations

SCHEMA_VERSION = 7

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE saga (
        saga_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('running', 'completed', 'failed', 'compensating', 'failed_compensation')),
        started_at REAL NOT NULL,
        ended_at REAL,
        input_json TEXT,
        failure_reason TEXT
    );
    -- only unfinished sagas are indexed (recovery reads them at start): a
    -- saga enters the index once and leaves it once, so the hot path pays
    -- little for it; listing by state or age scans, off the hot path
    CREATE INDEX saga_unfinished ON saga(state) WHERE state IN ('running', 'compensating');
    CREATE TABLE saga_step (
        saga_id INTEGER NOT NULL,
        step_index INTEGER NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed', 'compensated')),
        cmd_json TEXT,
        target TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        output_json TEXT,
        failure_reason TEXT,
        compensation_json TEXT,
        PRIMARY KEY (saga_id, step_index)
    ) WITHOUT ROWID;
    """,
    # 2: a durable high-water mark of saga ids, so that ids never go back when
    # the retention purge or `vacuum` empties the log
    2: """
    CREATE TABLE saga_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO saga_meta(key, value) SELECT 'next_id', coalesce(max(saga_id), 0) + 1
        FROM saga;
    """,
    # 3: idempotency keys: spawn(saga, key=...) returns the saga that already
    # has the key, in flight or ended (and not yet purged)
    3: """
    ALTER TABLE saga ADD COLUMN idem_key TEXT;
    CREATE UNIQUE INDEX saga_idem_key ON saga(idem_key) WHERE idem_key IS NOT NULL;
    """,
    # 4: step retries: the attempt a step is at, and every attempt of a step
    # issued with a retry policy, once it ended (failed or succeeded)
    4: """
    ALTER TABLE saga_step ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE saga_step_attempt (
        saga_id INTEGER NOT NULL,
        step_index INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        failure_reason TEXT,
        state TEXT NOT NULL CHECK (state IN ('failed', 'succeeded')),
        PRIMARY KEY (saga_id, step_index, attempt)
    ) WITHOUT ROWID;
    """,
    # 5: per-kind concurrency limits: a saga may wait in its kind's queue
    # (state 'queued'); SQLite cannot alter a CHECK, so the table is rebuilt
    5: """
    CREATE TABLE saga_v5 (
        saga_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed',
                                             'compensating', 'failed_compensation')),
        started_at REAL NOT NULL,
        ended_at REAL,
        input_json TEXT,
        failure_reason TEXT,
        idem_key TEXT,
        queued_at REAL,
        queue_seq INTEGER
    );
    INSERT INTO saga_v5(saga_id, name, state, started_at, ended_at, input_json,
                        failure_reason, idem_key)
        SELECT saga_id, name, state, started_at, ended_at, input_json, failure_reason,
               idem_key FROM saga;
    DROP TABLE saga;
    ALTER TABLE saga_v5 RENAME TO saga;
    CREATE INDEX saga_unfinished ON saga(state)
        WHERE state IN ('queued', 'running', 'compensating');
    CREATE UNIQUE INDEX saga_idem_key ON saga(idem_key) WHERE idem_key IS NOT NULL;
    """,
    # 6: which ids were handed out and never logged: each supervisor start
    # records its run (its first id, when; a clean stop adds the first id it
    # never handed out) and moves the ids' high-water mark
    # ahead of every id it may hand out; every purge records the newest end
    # time it may have removed (see supervisor.store.read)
    6: """
    CREATE TABLE saga_run (first_id INTEGER PRIMARY KEY, started_at REAL NOT NULL,
                           pid INTEGER, end_id INTEGER) WITHOUT ROWID;
    INSERT OR IGNORE INTO saga_meta(key, value) VALUES ('purge_cutoff', 0);
    """,
    # 7: steps in a rowid table, in the order they were issued, found by a
    # unique index on (saga_id, step_index).  As a WITHOUT ROWID table keyed
    # by (saga_id, step_index), every step a saga issued after its first went
    # into the middle of the table, among other sagas' steps, and every end
    # rewrote a whole row there: 2.0-2.5 us of the writer's CPU a step row,
    # against 1.3-1.6 now (docs/performance.md)
    7: """
    CREATE TABLE saga_step_v7 (
        saga_id INTEGER NOT NULL,
        step_index INTEGER NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed', 'compensated')),
        cmd_json TEXT,
        target TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        output_json TEXT,
        failure_reason TEXT,
        compensation_json TEXT,
        attempt INTEGER NOT NULL DEFAULT 1
    );
    INSERT INTO saga_step_v7(saga_id, step_index, name, state, cmd_json, target, started_at,
                             ended_at, output_json, failure_reason, compensation_json, attempt)
        SELECT saga_id, step_index, name, state, cmd_json, target, started_at, ended_at,
               output_json, failure_reason, compensation_json, attempt
        FROM saga_step;
    DROP TABLE saga_step;
    ALTER TABLE saga_step_v7 RENAME TO saga_step;
    CREATE UNIQUE INDEX saga_step_key ON saga_step(saga_id, step_index);
    """,
}


# The same tables as SQLite's schema at SCHEMA_VERSION, in PostgreSQL's dialect
# (a table there is a heap with its primary key an index beside it: the shape
# SQLite's saga_step took in its version 7).
PG_DDL = """
CREATE TABLE IF NOT EXISTS saga (
    saga_id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed',
                                         'compensating', 'failed_compensation')),
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    input_json TEXT,
    failure_reason TEXT,
    idem_key TEXT,
    queued_at DOUBLE PRECISION,
    queue_seq BIGINT
);
CREATE INDEX IF NOT EXISTS saga_unfinished ON saga(state)
    WHERE state IN ('queued', 'running', 'compensating');
CREATE UNIQUE INDEX IF NOT EXISTS saga_idem_key ON saga(idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS saga_step (
    saga_id BIGINT NOT NULL,
    step_index INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed', 'compensated')),
    cmd_json TEXT,
    target TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    output_json TEXT,
    failure_reason TEXT,
    compensation_json TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (saga_id, step_index)
);
CREATE TABLE IF NOT EXISTS saga_step_attempt (
    saga_id BIGINT NOT NULL,
    step_index INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION NOT NULL,
    failure_reason TEXT,
    state TEXT NOT NULL CHECK (state IN ('failed', 'succeeded')),
    PRIMARY KEY (saga_id, step_index, attempt)
);
CREATE TABLE IF NOT EXISTS saga_meta (key TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS saga_run (first_id BIGINT PRIMARY KEY,
                                     started_at DOUBLE PRECISION NOT NULL,
                                     pid INTEGER, end_id BIGINT);
INSERT INTO saga_meta(key, value) VALUES ('next_id', 1), ('purge_cutoff', 0)
    ON CONFLICT (key) DO NOTHING;
-- 7: the fleet.  A node is a supervisor on this log: its number puts its ids
-- in a range of their own (node_no << 40 on), its epoch fences it, its lease
-- (the database's clock) says it is alive; a saga row names its node.
CREATE TABLE IF NOT EXISTS saga_node (
    node_no SERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    epoch BIGINT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    pid INTEGER,
    host TEXT,
    version TEXT,
    started_at TIMESTAMPTZ NOT NULL,
    next_id BIGINT NOT NULL DEFAULT 0
);
ALTER TABLE saga ADD COLUMN IF NOT EXISTS node_no INTEGER;
-- a key is claimed here, in a transaction of its own, when a node decides a
-- keyed spawn: two nodes racing one key get one saga (the claim's primary key)
CREATE TABLE IF NOT EXISTS saga_key (idem_key TEXT PRIMARY KEY, saga_id BIGINT NOT NULL,
                                     node_no INTEGER);
-- cancel from anywhere: a request for the owner to decide on its loop
CREATE TABLE IF NOT EXISTS saga_cancel (saga_id BIGINT PRIMARY KEY, reason TEXT NOT NULL,
                                        requested_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS saga_node_unfinished ON saga(node_no)
    WHERE state IN ('queued', 'running', 'compensating');
-- the fence, in every commit and every renewal: the node's lease is extended
-- only under its epoch and before it runs out; else the transaction fails
-- (SF001): a node paused or cut off past its lease never commits again
CREATE OR REPLACE FUNCTION saga_fence(n INTEGER, e BIGINT, lease DOUBLE PRECISION)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE saga_node SET lease_until = greatest(lease_until,
                                                now() + make_interval(secs => lease))
        WHERE node_no = n AND epoch = e AND lease_until > now();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'node % is fenced: epoch % is no longer its own, or its lease ran out',
            n, e USING ERRCODE = 'SF001';
    END IF;
END $$;
-- 8: fleet-wide per-kind limits.  A queued saga's queue_seq comes from one
-- sequence for the fleet; a saga of a fleet-limited kind starts only once it
-- holds one of its kind's slots (at most the limit), granted in that order
CREATE SEQUENCE IF NOT EXISTS saga_queue_seq;
CREATE TABLE IF NOT EXISTS saga_slot (saga_id BIGINT PRIMARY KEY, name TEXT NOT NULL,
                                      granted_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS saga_slot_name ON saga_slot(name);
CREATE INDEX IF NOT EXISTS saga_queued ON saga(name, queue_seq) WHERE state = 'queued';
"""
PG_SCHEMA_VERSION = 8  # SQLite's 6 (its 7 is SQLite's own), the fleet's tables, its slots
