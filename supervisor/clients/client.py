"""SagaClient: spawn, cancel, wait and follow the bus from another process.

A client finds a running supervisor from its data dir alone: the shared
segment's name is derived from the data dir, and ``<data_dir>/run/control``
holds the path of the supervisor's control socket (a Unix socket, mode 0600:
messages are pickles, so only the supervisor's own user may connect).

Ids come from the shared segment (lock-free, no round trip); the saga class
is shipped once per class and connection, its state once per saga.  The
supervisor pushes the outcome of every saga this client spawned as soon as it
is committed, so ``wait()`` on one of them is no round trip (a launcher whose
other threads keep the GIL busy pays each round trip in switch intervals).
The connection itself is :class:`~supervisor.clients.core.ClientCore`, which
:class:`~supervisor.clients.async_client.AsyncSagaClient` shares.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from typing import Any

import supervisor.common.checks as _checks
import supervisor.wire.requests as rq
from supervisor.clients.core import ClientCore, control_address
from supervisor.common.future import Future
from supervisor.common.subscription import Subscription
from supervisor.errors import SpawnError, ended_late
from supervisor.saga import Event, Outcome, Saga

PROTOCOL = rq.PROTOCOL


class SagaClient:
    """A connection to the supervisor running on `data_dir`.  Thread-safe."""

    def __init__(self, data_dir: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.core = ClientCore(data_dir, timeout)
        self.data_dir = self.core.data_dir

    def _call(self, make: Any, timeout: float | None = 30.0,
              spawned: tuple[int, ...] | None = None) -> Any:
        """A request (``make(req)``) and its answer."""
        p = Future()
        req = self.core.call(make, p, spawned)
        try:
            return p.result(timeout)
        except TimeoutError:
            raise TimeoutError(f"no answer to {rq.OP_OF[type(make(req))]} within "
                               f"{timeout}s") from None
        finally:
            self.core.done(req)

    def spawn(self, saga: Saga, key: str | None = None, durable: bool = False) -> int:
        """Spawn `saga` on the supervisor; returns its id.  With an idempotency
        `key`, the id of the saga that holds it (see
        :meth:`supervisor.Supervisor.spawn`).  By default it returns before
        the supervisor logged the saga; with `durable`, only once it is in the
        log (one round trip and a commit more)."""
        core = self.core
        item, = core.prepare([saga], key)
        sid = item.saga_id
        core.expect([sid])
        try:
            if key is None and item.class_id in core.accepted:
                # pipelined: nothing to wait for, the id is ours already; a
                # refusal (a stopping supervisor, a malformed request) is its
                # outcome: wait() raises it
                seq = core.send(rq.Spawn(0, item, True), spawned=(sid,))
                if durable:
                    core.await_logged(seq)
                return sid
            got = int(self._call(lambda req: rq.Spawn(req, item, True), spawned=(sid,)))
            if durable:
                core.await_logged(core.spawns_sent)
        except BaseException as exc:
            core.abandon([sid], exc)
        core.accepted.add(item.class_id)  # loaded there: the next spawns need no answer
        return core.spawned(sid, got)

    def spawn_many(self, sagas: list[Saga], durable: bool = False) -> list[int]:
        """Spawn many sagas as one batch: their ids, in order (all or none
        start; sent in parts of 2,048 as they are encoded, taken whole with
        the last); with `durable`, once they are in the log."""
        core = self.core
        answer = Future()
        # (abandoned if it cannot be sent)
        req, ids = core.call_batch(_checks.sagas(sagas), answer)
        try:
            try:
                got = list(answer.result(30.0))
            except TimeoutError:
                raise TimeoutError("no answer to spawn_many within 30.0s") from None
            finally:
                core.done(req)
            if durable:
                core.await_logged(core.spawns_sent)
            return got
        except BaseException as exc:
            core.abandon(ids, exc)

    def cancel(self, saga_id: int, reason: str = "cancelled", timeout: float | None = 30.0
               ) -> bool:
        sid = _checks.saga_id(saga_id)
        why = _checks.text(reason, "reason")
        return bool(self._call(lambda req: rq.Cancel(req, sid, why), timeout=timeout))

    def wait(self, saga_id: int, timeout: float | None = None) -> Outcome:
        sid = _checks.saga_id(saga_id)
        timeout = _checks.timeout(timeout)
        mine = self.core.outcome(sid)
        if mine is None:  # not spawned here: ask
            try:
                state, reason = self._call(lambda req: rq.Wait(req, sid), timeout=timeout)
            except TimeoutError:
                raise TimeoutError(ended_late(sid, timeout)) from None
            return Outcome(sid, state, reason)
        if type(mine) is not tuple:  # spawned here: its outcome is pushed, no round trip
            try:
                mine = mine.result(timeout)
            except TimeoutError:
                raise TimeoutError(ended_late(sid, timeout)) from None
        self.core.outcomes.pop(sid, None)  # taken
        state, reason = mine
        return Outcome(sid, state, reason)

    def publish(self, event: Event) -> None:
        _checks.event(event)
        self._call(lambda req: rq.Publish(req, event.kind, event.data,
                               event.saga_id, event.step))

    def metrics(self) -> str:
        """The supervisor's Prometheus exposition (needs prometheus-client
        where the supervisor runs)."""
        return bytes(self._call(rq.Metrics)).decode()

    def health(self) -> dict[str, Any]:
        """The supervisor's health report (as :meth:`Supervisor.health`)."""
        return dict(self._call(rq.Health))

    def register(self, blob: bytes) -> None:
        """A registration record, dill'ed (what ``engine="process"`` ships)."""
        self._call(lambda req: rq.Register(req, blob))

    def clock_moved(self, offset: float) -> None:
        """A launcher's test clock moved: its mirror there follows."""
        self.core.send(rq.ClockMoved(0, offset))

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Subscribe now; iterate over bus events from now on.  The iterator
        ends when the supervisor stops, the client closes, or no event came
        for `timeout` seconds."""
        limit = _checks.timeout(timeout)
        return Subscription(self.subscribe_queue()).until_quiet(limit)

    def subscribe_queue(self) -> queue.SimpleQueue[Event | None]:
        """Subscribe now: bus events from now on go to the queue returned
        (None once the connection is gone)."""
        core = self.core
        if core.events is None:
            core.events = queue.SimpleQueue()
            self._call(rq.Subscribe)
        q: queue.SimpleQueue[Event | None] = core.events
        return q

    def _subscribe_into(self, q: Any, early: int | None = None) -> None:
        """Subscribe into `q` (``put``; None ends); with `early`, starting with
        the events the supervisor process held for its launcher's
        subscription of that number, made before it started (the process
        engine's link, never a user)."""
        self.core.events = q
        self._call(lambda req: rq.Subscribe(req, early))

    @property
    def unconfirmed(self) -> list[int]:
        """Ids this client's spawns returned that the supervisor has not (yet)
        confirmed as logged."""
        return self.core.unconfirmed

    def seal(self, timeout: float = 10.0) -> None:
        """Send nothing more, and return once the supervisor has taken every
        request sent before (a spawn that was not answered, too): what a
        stopping launcher does first, so that every id it returned is
        logged with an outcome."""
        self.core.seal(timeout)

    def close(self) -> None:
        self.core.close()

    def __enter__(self) -> SagaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SagaClient", "control_address", "SpawnError"]
