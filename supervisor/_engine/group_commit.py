"""Group commit: one transaction per loop turn, and the outputs of a turn
held until its rows are committed (write-ahead).  Loop thread only, plus the
writer thread it owns.

A small batch is committed inline, at the end of its turn.  Under load (a
batch of ``pipeline_rows`` rows or more, or while the writer is still busy)
the batch is handed to the *writer thread* and the loop goes on with the
next turn while SQLite (which runs without the GIL) commits; the turn's
outputs wait in ``awaiting_commit`` and leave, in turn order, through the
``emit`` callback the loop gave, once their batch is committed.

The turn's worker messages do not wait: they leave at the end of the turn,
before its commit (``send_workers``), so that a worker computes while the
log commits.  Write-ahead holds all the same, because a worker reaches the
world only through the loop: whatever it answers lands in a later turn,
whose batch commits after this one, and only then does anything it caused
leave the engine.  A crash before this commit loses a worker's work on
rows that were never logged, which is what a crash one turn earlier loses.

The writer *borrows* the log: whenever the loop touches the log itself
(commit inline, read it), it first waits for the writer (:meth:`commit_now`,
:meth:`drain`).  A failed commit is the loop's end: it is raised as a
:class:`LogError` naming the file and the cause.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable

from supervisor._engine.records import Stats, Turn, TurnOutputs
from supervisor.errors import LogError
from supervisor.store.batch import Batch
from supervisor.store.seam import LogStore


class LogWriter:
    """Commits the loop's batches on a thread of its own, in order."""

    def __init__(self, sagalog: LogStore, wake_fd: int) -> None:
        self._log = sagalog
        self._wake_fd = wake_fd
        self._cv = threading.Condition()
        self._queue: deque[tuple[int, Batch]] = deque()
        self.done = 0
        self.error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="saga-log-writer", daemon=True)
        self._thread.start()

    def busy(self) -> bool:
        return bool(self._queue)

    def submit(self, seq: int, batch: Batch) -> bool:
        """Queue batch `seq`; True if it joined the batch waiting behind the
        one being committed (group commit across turns: one commit for all
        the turns that came while the last one ran)."""
        with self._cv:
            if len(self._queue) > 1:  # [0] is being committed; the tail waits
                self._queue[-1][1].extend(batch)
                self._queue[-1] = (seq, self._queue[-1][1])
                return True
            self._queue.append((seq, batch))
            self._cv.notify()
            return False

    def wait(self, seq: int) -> None:
        """Block until batch `seq` is committed (re-raising a commit error)."""
        with self._cv:
            while self.done < seq and self.error is None:
                self._cv.wait()
            if self.error is not None:
                raise self.error

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    return
                seq, batch = self._queue[0]
            try:
                self._log.commit(batch)
            except BaseException as exc:  # the loop re-raises it at its next wait
                with self._cv:
                    self.error = exc
                    self._cv.notify_all()
                self._wake()
                return
            with self._cv:
                self._queue.popleft()
                self.done = seq
                self._cv.notify_all()
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_fd, b"w")  # the loop may be waiting to flush
        except OSError:
            pass

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(30)


class GroupCommit:
    def __init__(self, sagalog: LogStore, turn: Turn, emit: Callable[[TurnOutputs], None],
                 send_workers: Callable[[], None], stats: Stats, wake_fd: int,
                 pipeline_rows: int) -> None:
        self.log = sagalog
        self.turn = turn
        self.emit = emit
        self.send_workers = send_workers
        self.stats = stats
        self.rows = pipeline_rows
        self.writer = LogWriter(sagalog, wake_fd) if pipeline_rows else None
        self.seq = 0  # batches handed to the writer
        self.awaiting_commit: deque[tuple[int, TurnOutputs]] = deque()

    def end_turn(self) -> None:
        """Send the turn's worker messages, commit its batch (inline, or
        handed to the writer under load), then emit its outputs once that
        batch is committed."""
        self.log.check_lease()  # a fenced fleet node stops here, every turn
        outputs = self.turn.take_outputs()
        self.send_workers()  # first: the worker runs while the log commits
        writer = self.writer
        need = self.awaiting_commit[-1][0] if self.awaiting_commit else 0
        if self.turn.batch:
            n = self.turn.batch.rows()
            if writer is not None and (writer.busy() or n >= self.rows):
                self.seq += 1
                self.stats["rows"] += n
                if not writer.submit(self.seq, self.turn.take_batch()):
                    self.stats["commits"] += 1
                need = self.seq
            else:
                self.commit_now()  # write-ahead of everything below
        if need:
            self.awaiting_commit.append((need, outputs))
        else:
            self.emit(outputs)
        self.flush_ready()

    def flush_ready(self, wait: bool = False) -> None:
        """Emit held outputs whose batch is committed (all of them, if `wait`)."""
        writer = self.writer
        held = self.awaiting_commit
        while held:
            seq, outputs = held[0]
            if writer is not None and writer.done < seq:
                if not wait:
                    if writer.error is not None:
                        raise self._log_error(writer.error)
                    return
                try:
                    writer.wait(seq)
                except BaseException as exc:
                    raise self._log_error(exc) from exc
            self.log.check_lease()  # (committed before a pause past the lease: not sent)
            held.popleft()
            self.emit(outputs)

    def commit_now(self) -> None:
        """Wait for the writer, then commit the turn's batch here (in order)."""
        writer = self.writer
        if writer is not None and self.seq > writer.done:
            try:
                writer.wait(self.seq)
            except BaseException as exc:
                raise self._log_error(exc) from exc
        if self.turn.batch:
            batch = self.turn.take_batch()
            self.stats["commits"] += 1
            self.stats["rows"] += batch.rows()
            try:
                self.log.commit(batch)
            except BaseException as exc:
                raise self._log_error(exc) from exc

    def drain(self) -> None:
        """Wait for the writer, then emit everything held (the log and the
        world agree again): before reading the log, and when stopping."""
        self.flush_ready(wait=True)

    def _log_error(self, exc: BaseException) -> LogError:
        if isinstance(exc, LogError):
            return exc
        return LogError(self.log.path, f"commit failed: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.stop()
            self.writer = None
