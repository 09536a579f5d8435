"""A client's spawns, as the control server takes them: each item checked,
then started; a large batch started a slice a turn.  Loop thread only.

A batch of more than a turn's slice of plain spawns is checked whole (all
or none start), then handed to the engine's inbox as one
:class:`~supervisor._engine.inbox.SpawnMany`, which the loop starts a slice
a turn, as it does a launcher's own ``spawn_many``: 40,000 sagas started in
one turn reach the workers, the log and the host as one wave each, every
stage waiting for the one before (the process engine went at 30,000 sagas/s
so, and at 45,000 with the same sagas sent in slices).  Until its last
slice is started, the connection is *deferred*: nothing more it sent is
taken (a cancel or a wait must not overtake the spawns before it), and it
is not told that its spawns are logged.  The batch is answered at once:
checked whole, it is accepted, and the inbox starts every request it took.

A client sends a batch in parts of 2,048 sagas with one request number,
each but the last saying ``more``, each as soon as it is encoded (a part is
also split when one frame, 16 MiB, cannot hold it): each part is checked as
it comes, while the client encodes the next, and kept; with the last the
batch is taken whole.  A part refused (malformed, past the segment's
capacity) refuses the batch: its answer is sent once, and the parts after it
are dropped; a last part that says ``abort`` (the client could not encode a
saga) drops the batch unanswered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import supervisor.wire.requests as rq
from supervisor._engine.control_msgs import Refused, spec_of
from supervisor._engine.control_socket import Conn
from supervisor._engine.inbox import SpawnMany
from supervisor.wire.codec import SagaSpec

if TYPE_CHECKING:
    from supervisor._engine.exits import Exits
    from supervisor._engine.records import Lifecycle
    from supervisor._engine.sagas import SagaOps
    from supervisor._engine.table import SagaTable
    from supervisor._engine.waiters import RemoteWaiters
    from supervisor.shmem.state import SharedState


Checked = tuple[int, SagaSpec, str | None]  # a spawn item's saga id, spec and key


class ClientSpawns:
    def __init__(self, life: Lifecycle, shared: SharedState, table: SagaTable, exits: Exits,
                 sagas: SagaOps, remote_waiters: RemoteWaiters,
                 spawn_keyed: Callable[[int, SagaSpec, str], int] | None,
                 post: Callable[[SpawnMany], None] | None, slice_size: int) -> None:
        self.life = life
        self.shared = shared
        self.table = table
        self.exits = exits
        self.sagas = sagas
        self.remote_waiters = remote_waiters
        self.spawn_keyed = spawn_keyed
        self.post = post  # into the engine's inbox (None: every batch starts at once)
        self.slice_size = slice_size

    def checked(self, c: Conn, it: rq.SpawnItem) -> Checked:
        """A spawn item's saga id (fresh), spec and key."""
        spec = spec_of(it, c.classes)
        sid = it.saga_id
        if self.shared.state(sid) != "live":
            raise _not_fresh(sid)
        self.still_fresh(sid)
        return sid, spec, it.key

    def still_fresh(self, sid: int) -> None:
        """Refuse `sid` if a saga of it started, or was accepted, already."""
        if sid in self.table.live or self.exits.is_undecided(sid):
            raise _not_fresh(sid)

    def start(self, sid: int, spec: SagaSpec, key: str | None) -> int:
        self.exits.expect(sid)
        if key is not None and self.spawn_keyed is not None:
            got = self.spawn_keyed(sid, spec, key)
            if got != sid:
                self.exits.forget(sid)  # the key's saga exists: this one never starts
            return got
        self.sagas.start(sid, spec)
        return sid

    def spawn(self, c: Conn, rec: rq.Spawn) -> None:
        """Request 0: pipelined, answered only if refused (the client took
        the id from shared memory and returned it already)."""
        if not self.life.running:
            raise Refused("NotRunningError", f"the supervisor is {self.life.state}")
        sid, spec, key = self.checked(c, rec.item)
        got = self.start(sid, spec, key)
        if rec.watch and got == sid:
            self.remote_waiters.add(sid, c)  # push its outcome
        if rec.req:
            c.send(("ok", rec.req, got))

    def spawn_many(self, c: Conn, rec: rq.SpawnBatch, resume: Callable[[Conn], None]
                   ) -> None:
        """Every item checked first, then all started: all or none.  A batch
        sent in parts is taken whole with its last part.  A large batch of
        plain spawns defers `c` until its last slice is started (then
        `resume` takes what `c` sent after it)."""
        parsed = self._whole(c, rec)
        if parsed is None:
            return
        if len({sid for sid, _, _ in parsed}) != len(parsed):
            raise Refused("ValueError", "a saga id appears twice in the batch")
        if self.post is None or len(parsed) <= self.slice_size or \
                any(key is not None for _, _, key in parsed):
            ids = [self.start(sid, spec, key) for sid, spec, key in parsed]
            self._started(c, rec, ids)
            return
        ids = [sid for sid, _, _ in parsed]
        for sid in ids:
            self.exits.expect(sid)  # waited for, and not fresh, from now on

        def started() -> None:
            c.deferred = False
            resume(c)

        c.deferred = True
        # accepted, all of them: the inbox starts every request it took
        self.post(SpawnMany(ids, [spec for _, spec, _ in parsed], 0, started))
        self._started(c, rec, ids)

    def _whole(self, c: Conn, rec: rq.SpawnBatch) -> list[Checked] | None:
        """The batch's items, checked: this request's, with those of the parts
        before it (checked as they came); None while more is to come, and for
        a batch refused already (answered once) or aborted by its client."""
        req = rec.req
        if not (rec.more or rec.abort or req in c.parts):
            return [self.checked(c, it) for it in rec.items]
        got = c.parts.get(req, [])
        if got is None or rec.abort:
            if not rec.more:
                c.parts.pop(req, None)
            return None
        held = sum(len(p) for p in c.parts.values() if p)  # (its other batches' too)
        if held + len(rec.items) > self.shared.capacity:
            raise Refused("ValueError", "the batches this client is sending hold more sagas "
                          f"than the supervisor's capacity ({self.shared.capacity:,})")
        before = len(got)
        got += [self.checked(c, it) for it in rec.items]
        if rec.more:
            c.parts[req] = got
            return None
        del c.parts[req]
        for sid, _, _ in got[:before]:  # (another client may have sent it since)
            self.still_fresh(sid)
        return got

    def refused(self, c: Conn, msg: tuple[Any, ...]) -> None:
        """A spawn_many request (`msg`, as read) was refused: if more of its
        batch is to come, that is dropped as it comes (refused once)."""
        if len(msg) > 4 and msg[4] is not False:  # (more, or a malformed `more`)
            c.parts[msg[1]] = None
        else:
            c.parts.pop(msg[1], None)

    def _started(self, c: Conn, rec: rq.SpawnBatch, ids: list[Any]) -> None:
        if rec.watch:  # push the outcomes of these sagas
            for sid in ids:
                self.remote_waiters.add(sid, c)
        c.send(("ok", rec.req, ids))


def _not_fresh(sid: int) -> Refused:
    return Refused("ValueError", f"saga id {sid!r} is not a fresh registered id")
