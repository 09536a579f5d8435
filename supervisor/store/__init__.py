"""The saga log: one seam (:mod:`.seam`: the interface the engine, recovery,
wait()'s fallback and the command line use, and :func:`~.seam.open_store`),
two stores behind it — the embedded SQLite file (:mod:`.sqlite`, the
default; read by :mod:`.read`, schema and migrations in :mod:`.schema`, WAL
checkpoints in :mod:`.checkpoint`) and PostgreSQL (:mod:`.pg`,
:mod:`.pg_rows`, :mod:`.pg_read`, connections in :mod:`.pg_connect`).
Only the supervisor writes the log."""
