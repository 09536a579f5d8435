"""A fleet of supervisors on one PostgreSQL log: each node's row, lease
and fence (:mod:`.node`), cancels from any node (:mod:`.cancel`), fleet-wide
limits (:mod:`.limit`) and the takeover of a dead node's portable sagas
(:mod:`.takeover`).  See docs/fleet.md."""
