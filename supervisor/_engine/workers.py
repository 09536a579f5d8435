"""Worker processes: start, readiness, replies, death, restart with backoff,
health thresholds.  Loop thread only.

The pool decides nothing about sagas.  :meth:`WorkerPool.read` returns the
reply batches a worker wrote; :meth:`WorkerPool.died` returns a verdict (the
replacement, or none, and why) and the loop replays or fails the dead
worker's sagas (:mod:`.recovery`).  A new saga goes to the first worker,
in index order, that is alive, holds fewer than ``worker_fill`` sagas and
is not busy in user code; when none is, to its shard, ``id % workers``,
unless that one is stuck (see :meth:`WorkerPool.for_saga`).  A worker
being recycled (over its RSS limit) finishes its own sagas while a fresh
one takes its place.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import multiprocess.connection

import supervisor.frames as frames
from supervisor.wire.codec import ClassRegistry
from supervisor._engine.pipes import drain
from supervisor._engine.records import Lifecycle, Settings, Stats, WorkerProc
from supervisor._engine.restarts import RestartWindow
from supervisor._engine.timers import WORKER_RESTART, Timers
from supervisor.errors import SupervisorError
from supervisor.protocol import USER_CODE_OPS, Op
from supervisor.worker import worker_main

log = logging.getLogger(__name__)

_READ = frames.READ_SIZE
_STOP = frames.frame(pickle.dumps([(Op.STOP,)]))
# a worker whose user code has answered nothing it was sent for this long is
# busy (a long step, or no core for it): a new saga goes on to the next
# worker with room
BUSY_AFTER = 0.01
# ... and for this long, stuck: a saga whose shard it is goes elsewhere (ten
# times longer: on a busy machine a worker may wait that long for a core, and
# the shard is what spreads a heavy load evenly)
STUCK_AFTER = 0.1


def _stuck(w: WorkerProc, after: float) -> bool:
    """`w` has answered none of the work it was sent for `after` seconds."""
    return bool(w.unacked) and time.monotonic() - w.waiting_since > after


def _last_answer(w: WorkerProc) -> float:
    """When `w` last made progress on its work (idle: now and always)."""
    return w.waiting_since if w.unacked else math.inf


class Death(NamedTuple):
    """What became of a dead worker's shard."""

    replacement: WorkerProc | None  # where its sagas go now (None: fail them)
    why: str  # the reason its sagas fail, if they do
    intensity: bool  # restart intensity exceeded: the supervisor must stop
    later: bool  # a replacement starts after a backoff: adopt its sagas then


def _start_helpers(mp: Any) -> None:
    """Start multiprocess's resource tracker, which a spawn or forkserver
    start needs, before the caller blocks SIGINT: the tracker's own start
    ends by unblocking SIGINT in the calling thread, and a worker started
    then would be born able to die of a Ctrl-C while it imports.  (A fork
    server, started by the first start, is then born with SIGINT blocked and
    forks workers that are too.)"""
    if mp.get_start_method() in ("spawn", "forkserver"):
        from multiprocess import resource_tracker

        resource_tracker.ensure_running()


class WorkerPool:
    def __init__(self, settings: Settings, mp: Any, sel: selectors.BaseSelector,
                 shm_name: str, registry: ClassRegistry, stats: Stats, life: Lifecycle,
                 on_readable: Callable[[WorkerProc], Any],
                 on_dead: Callable[[WorkerProc], Any], timers: Timers,
                 live: dict[int, Any]) -> None:
        self.settings = settings
        self.mp = mp
        self.sel = sel
        self.shm_name = shm_name
        self.registry = registry
        self.stats = stats
        self.life = life
        self.on_readable = on_readable
        self.on_dead = on_dead
        self.clock: Callable[[], float] = settings.clock or time.monotonic  # backoffs
        self.live = live  # the sagas in flight (the table's)
        self.workers: list[WorkerProc] = []
        self.retired: list[WorkerProc] = []  # recycled, finishing their sagas
        self.shipped: set[int] = set()  # class ids every worker has
        self.window = RestartWindow(settings.max_restarts, settings.restart_period,
                                    settings.restart_backoff)
        # replacements waiting out a backoff: WORKER_RESTART entries of the
        # loop's one heap, (index, dead worker, why) each
        self.timers = timers

    # -- start-up ------------------------------------------------------------------

    def start_all(self) -> None:
        for i in range(self.settings.workers):
            self.workers.append(self._start(i))
        self._await_ready(self.workers, self.settings.start_timeout)

    def _start(self, index: int) -> WorkerProc:
        mp = self.mp
        in_r, in_w = mp.Pipe(duplex=False)
        out_r, out_w = mp.Pipe(duplex=False)
        proc = mp.Process(target=worker_main, name=f"saga-worker-{index}",
                          args=(index, self.shm_name, in_r, out_w), daemon=True)
        # a terminal's Ctrl-C goes to the whole process group: the worker is
        # born with SIGINT blocked (the mask survives fork and exec) and
        # ignores it from then on; the launcher stops its workers itself.
        # (multiprocess's resource tracker is started first: its start
        # unblocks SIGINT in this thread)
        _start_helpers(mp)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        in_r.close()
        out_w.close()
        wfd = os.dup(in_w.fileno())
        rfd = os.dup(out_r.fileno())
        in_w.close()
        out_r.close()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        w = WorkerProc(index, proc, wfd, rfd)
        self.sel.register(rfd, selectors.EVENT_READ, lambda mask: self.on_readable(w))
        self.sel.register(proc.sentinel, selectors.EVENT_READ, lambda mask: self.on_dead(w))
        for cid in sorted(self.shipped):
            w.outbox.append((Op.CLS, cid, self.registry.blob(cid)))
        return w

    def _await_ready(self, workers: list[WorkerProc], timeout: float) -> None:
        """Block until every worker has imported and said READY; a worker that
        dies first is a clear error (e.g. a __main__ without the
        ``if __name__ == "__main__"`` guard under spawn)."""
        deadline = time.monotonic() + timeout
        waiting = {w.rfd: w for w in workers}
        sentinels = {w.proc.sentinel: w for w in workers}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SupervisorError(f"{len(waiting)} worker(s) not ready after {timeout}s")
            for fd in multiprocess.connection.wait(list(waiting) + list(sentinels), left):
                if fd in waiting:
                    w = waiting[fd]
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if data:
                        bodies = w.reader.feed(data)
                        if any(m[0] == Op.READY for b in bodies for m in pickle.loads(b)):
                            del waiting[fd]
                            del sentinels[w.proc.sentinel]
                        continue
                w = waiting.get(fd) or sentinels[fd]
                w.proc.join(5.0)
                raise SupervisorError(
                    f"worker {w.index} exited during start-up (exit code {w.proc.exitcode}); "
                    "its stderr says why. Under the spawn/forkserver start methods, a "
                    "launcher script must start the supervisor under "
                    "`if __name__ == \"__main__\":`")

    # -- sharding and messages --------------------------------------------------------

    def for_saga(self, saga_id: int) -> WorkerProc:
        """The worker a new saga runs on: the first that is alive, holds
        fewer than ``worker_fill`` sagas and is not busy in user code
        (BUSY_AFTER); when none is (or ``worker_fill`` is 0), the saga's
        shard, ``id % workers``, unless that one is dead or stuck
        (STUCK_AFTER): then a live worker that is idle or, failing that, the
        one that answered last.  Filling one worker first at light load
        means fewer processes to wake a saga (a lower p50 and tail on few
        cores); a worker stuck in a long step takes no new saga while
        another can."""
        fill = self.settings.worker_fill
        for w in self.workers:
            if w.in_flight < fill and w.alive and not _stuck(w, BUSY_AFTER):
                return w
        shard = self.workers[saga_id % len(self.workers)]
        if shard.alive and not _stuck(shard, STUCK_AFTER):
            return shard
        live = [w for w in self.workers if w.alive]
        return max(live, key=_last_answer) if live else shard

    def ship_class(self, class_id: int) -> None:
        """Make sure every worker has the class (sent once per class)."""
        if class_id not in self.shipped:
            self.shipped.add(class_id)
            blob = self.registry.blob(class_id)
            for w in self.workers:
                w.outbox.append((Op.CLS, class_id, blob))

    def all(self) -> list[WorkerProc]:
        return self.retired + self.workers if self.retired else self.workers

    def read(self, w: WorkerProc) -> list[list[Any]]:
        """The reply batches `w` wrote (loaded, acknowledgements taken out);
        EOF is left to its sentinel.  A reply that cannot be unpickled is
        counted and dropped."""
        batches: list[list[Any]] = []
        try:
            while True:
                data = os.read(w.rfd, _READ)
                if not data:
                    break
                w.last_reply = time.monotonic()
                for body in w.reader.feed(data):
                    try:
                        replies = pickle.loads(body)
                    except (KeyboardInterrupt, MemoryError):
                        raise
                    except BaseException as exc:
                        self.stats["input_errors"] += 1
                        log.warning("worker %d sent an unreadable reply: %s: %s", w.index,
                                    type(exc).__name__, exc)
                        continue
                    if replies and replies[-1][0] == Op.ACK:
                        self._acked(w, replies.pop()[1])
                    batches.append(replies)
                if len(data) < _READ:
                    break
        except (BlockingIOError, OSError):
            pass
        return batches

    def send(self, w: WorkerProc, msgs: list[tuple[Any, ...]]) -> None:
        """Frame `msgs` as one batch and write what the pipe takes; note which
        sagas' user code the batch runs, until the worker acknowledges it."""
        if w.alive:
            w.batches += 1
            sids = [m[1] for m in msgs if m[0] in USER_CODE_OPS]
            if sids:
                if not w.unacked:
                    w.waiting_since = time.monotonic()
                w.unacked.append((w.batches, sids))
            w.outbuf += frames.frame(pickle.dumps(msgs, protocol=5))
            if not w.want_write:
                self.flush(w)

    def _acked(self, w: WorkerProc, n: int) -> None:
        unacked = w.unacked
        while unacked and unacked[0][0] <= n:
            unacked.popleft()
        if unacked:
            w.waiting_since = time.monotonic()  # it answered: not stuck, behind
        else:
            self.release_quarantine(w)

    def suspects(self, w: WorkerProc) -> list[int]:
        """The sagas whose user code `w` was running when it died: those of
        the first batch it had not acknowledged (a worker answers each batch
        before it starts the next, so the batches behind it never ran)."""
        return list(w.unacked[0][1]) if w.unacked else []

    def release_quarantine(self, w: WorkerProc) -> None:
        """Send the next isolated replay, alone, once everything `w` was sent
        is acknowledged: if it kills the worker, it alone is to blame."""
        while w.quarantine and not w.unacked and w.alive:
            msg = w.quarantine.popleft()
            if msg[1] in self.live:
                self.send(w, [msg])

    def flush(self, w: WorkerProc) -> None:
        """Write `w`'s buffer without blocking (a full pipe waits for
        writability); a write error means death, which its sentinel reports."""
        drain(self.sel, w, lambda mask: self.flush(w))

    # -- death and restart -------------------------------------------------------------

    def died(self, w: WorkerProc, has_orphans: bool) -> Death:
        """`w` is gone (its replies were read): close it, and decide what
        takes its shard, within restart intensity (with backoff)."""
        w.alive = False
        for fd in (w.rfd, w.proc.sentinel) + ((w.wfd,) if w.want_write else ()):
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        w.proc.join(1.0)
        code = w.proc.exitcode
        why = w.kill_reason or f"worker crashed (exit code {code})"
        for fd in (w.rfd, w.wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        running = self.life.running
        if w.retiring:
            self.retired = [x for x in self.retired if x is not w]
            # died before finishing its sagas: they go to its successor
            return Death(self.workers[w.index] if has_orphans and running else None, why,
                         False, False)
        if not running or w not in self.workers:
            return Death(None, why, False, False)
        log.error("worker %d (pid %s) died (exit code %s)%s", w.index, w.proc.pid, code,
                  "; its sagas are replayed or failed" if has_orphans else "")
        verdict = self.window.record(time.monotonic())
        if not verdict.allowed:
            return Death(None, why, True, False)
        self.stats["worker_restarts"] += 1
        if verdict.delay > 0:
            # deaths in a row: back off, so a crash loop does not spin the machine
            log.warning("restarting worker %d in %.2fs (restart %d within %ss)", w.index,
                        verdict.delay, verdict.restarts, self.settings.restart_period)
            self.timers.at(self.clock() + verdict.delay, WORKER_RESTART, (w.index, w, why))
            return Death(None, why, False, True)
        replacement = self._start(w.index)
        self.workers[w.index] = replacement
        return Death(replacement, why, False, False)

    def restart_due(self, now: float, index: int, dead: WorkerProc, why: str
                    ) -> WorkerProc | None:
        """A ``WORKER_RESTART`` entry came due: start `dead`'s replacement
        (None: stale, the slot moved on or the pool is stopping).  One that
        cannot start now (no descriptors for its pipes: EMFILE) is tried again
        in a second; the OSError is raised for the caller to say so."""
        if not self.life.running or self.workers[index] is not dead:
            return None
        try:
            replacement = self._start(index)
        except OSError:
            self.timers.at(now + 1.0, WORKER_RESTART, (index, dead, why))
            raise
        self.workers[index] = replacement
        return replacement

    # -- health thresholds ----------------------------------------------------------------

    def check(self) -> None:
        """Act on a threshold only after `breaches` consecutive breaches: a
        silent worker (stuck in user code) is killed (its death is then
        handled as any other), one over `rss_limit` is recycled gracefully."""
        import psutil

        s = self.settings
        now = time.monotonic()
        for w in list(self.workers) + [x for x in self.retired if x.alive]:
            if not w.alive:
                continue
            if now - w.last_reply > s.heartbeat_timeout:
                w.hb_breaches += 1
                if w.hb_breaches >= s.breaches and w.kill_reason is None:
                    w.kill_reason = (f"worker unresponsive (no heartbeat for "
                                     f"{now - w.last_reply:.1f}s)")
                    log.error("worker %d (pid %s): %s; killing it", w.index, w.proc.pid,
                              w.kill_reason)
                    w.proc.kill()
                    continue
            else:
                w.hb_breaches = 0
            try:
                if w.psproc is None:
                    w.psproc = psutil.Process(w.proc.pid)
                w.rss = int(w.psproc.memory_info().rss)
            except psutil.Error:
                continue
            if s.rss_limit is not None and not w.retiring and self.life.running:
                if w.rss > s.rss_limit:
                    w.rss_breaches += 1
                    if w.rss_breaches >= s.breaches:
                        self._recycle(w)
                else:
                    w.rss_breaches = 0
        for w in [x for x in self.retired if x.alive and x.in_flight == 0 and not x.outbox]:
            self._write_stop(w)

    def _recycle(self, w: WorkerProc) -> None:
        log.warning("worker %d (pid %s) RSS %d B over the limit %d B %d times: recycling",
                    w.index, w.proc.pid, w.rss, self.settings.rss_limit, w.rss_breaches)
        self.stats["worker_recycles"] += 1
        w.retiring = True
        self.retired.append(w)
        self.workers[w.index] = self._start(w.index)

    @staticmethod
    def _write_stop(w: WorkerProc) -> None:
        w.batches += 1
        try:
            os.write(w.wfd, _STOP)
        except OSError:
            pass

    def stop_all(self) -> None:
        """Ask every worker to exit, then terminate, then kill what is left."""
        workers = self.workers + self.retired
        self.workers, self.retired = [], []
        for w in workers:
            if w.alive:
                self._write_stop(w)
            for fd in (w.wfd, w.rfd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            w.alive = False
        deadline = time.monotonic() + 5.0
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.exitcode is None:
                w.proc.terminate()
                w.proc.join(2.0)
            if w.proc.exitcode is None:
                w.proc.kill()
                w.proc.join(2.0)
