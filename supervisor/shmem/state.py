"""The shared-memory hot path: a lock-free id counter and terminal-claim table.

This is the only module that touches the compiled cffi module (``_sagashm``):
everything else calls the typed methods of :class:`SharedState`.  The C side
returns status codes; they become the exceptions of :mod:`supervisor.errors`
here, in one place.

Ownership: the process that *creates* a segment is the only one that unlinks
it (:meth:`SharedState.unlink`, or at its interpreter exit).  Processes that
attach only unmap it when they close or die, so a client killed with SIGKILL
leaves the segment intact for everyone else.  We use ``shm_open``/``mmap`` in C
rather than :mod:`multiprocessing.shared_memory`, whose resource tracker on
Python < 3.13 unlinks segments it merely attached to (CPython gh-82300).

Semantics:

* ids start at ``first_id`` and are unique and strictly increasing per caller
  across every attached process; a batch (:meth:`SharedState.reserve_ids`) is
  consecutive.  Past ``MAX_ID`` the counter raises, it never wraps.
* each saga id maps to slot ``id % capacity``.  A slot holds a live saga
  (registered, not claimed), a claimed one (its terminal is decided) or
  nothing.  :meth:`register` never overwrites a live slot; a claimed slot may
  be reused by a newer id (or a taken-over saga's id of another fleet node),
  after which a late claim for the old id returns ``False``: ABA-safe.
* :meth:`claim` returns ``True`` exactly once per registered id, to the first
  caller in any process; every other caller gets ``False`` and must do
  nothing visible.
* the id fence: no id at or past :attr:`SharedState.id_limit` is handed out
  (an allocation there waits for it to rise, then raises IdFenceError): see
  :mod:`supervisor._engine.ids`.  A segment created without one has none.
"""

from __future__ import annotations

import os
import secrets
import time
import weakref
from typing import Any

from supervisor.common.procs import same_process
from supervisor.errors import (CapacityError, IdOverflowError, LayoutMismatchError,
                               SegmentClosedError, SegmentExistsError, SegmentNotFoundError,
                               SupervisorError)

from supervisor.shmem.binding import (
    _ffi, _lib, MAX_ID, MAX_CAPACITY, LAYOUT_VERSION, _next_id, _reserve, _register, _adopt,
    _acquire, _claim, _state, _in_flight, _peek, _noop, _noop1, _next_id_p, _claim_p,
    _state_p, _OK, _ENOENT, _EEXIST, _ESYS, _EMAGIC, _EVERSION, _ESIZE, _EFULL, _EUNINIT,
    _ACQ_OVERFLOW, _AT_FENCE, _id_limit, _raise_id_limit, wait_at_fence, _STATE_NAMES,
    SagaSlotState, _CLOSED, _posix_name, _check_int, _process_token, _sys_error,
    unlink_if_creator,
)


_MISMATCH = {_EMAGIC: "wrong magic number",
             _EVERSION: "another layout version or header size",
             _ESIZE: "header size fields disagree with the segment size",
             _EUNINIT: "header never initialised (empty or zeroed)"}


def noop() -> None:
    """Call an empty C function: the floor of any cffi call (for benchmarks)."""
    _noop()


class SharedState:
    """One process's handle on a shared segment (id counter + claim table).

    Create it in the owning process with :meth:`create`; attach from any other
    process with :meth:`attach`.  Methods are safe to call from several threads
    and processes at once; :meth:`close` must not race with other calls on the
    same handle."""

    __slots__ = ("_seg", "_name", "_capacity", "_creator", "_finalizer", "__weakref__")
    _seg: Any  # cffi `ssm_segment *`, or _CLOSED
    _name: str
    _capacity: int
    _creator: bool
    _finalizer: Any  # weakref.finalize | None

    def __init__(self) -> None:
        raise TypeError("use SharedState.create(...) or SharedState.attach(name)")

    @classmethod
    def _wrap(cls, seg: object, name: str, creator: bool) -> SharedState:
        # The first segment a process opens becomes its *primary*: its hot
        # calls go through a C global with 0-1 arguments (cffi's fast path).
        if _lib.ssm_get_primary() == _ffi.NULL:
            _lib.ssm_set_primary(seg)
            cls = _PrimaryState
        self = object.__new__(cls)
        self._seg = seg
        self._name = name
        self._capacity = int(_lib.ssm_capacity(seg))
        self._creator = creator
        self._finalizer = None
        if creator:
            self._finalizer = weakref.finalize(
                self, unlink_if_creator, _posix_name(name), os.getpid()
            )
        return self

    @classmethod
    def create(
        cls, capacity: int = 65536, name: str | None = None, first_id: int = 1,
        id_limit: int | None = None,
    ) -> SharedState:
        """Create a new segment. `capacity` (a power of two) bounds the number
        of sagas in flight; ids start at `first_id`; with `id_limit`, no id
        at or past it is handed out until :meth:`raise_id_limit`.  Raises
        :class:`SegmentExistsError` if `name` is taken."""
        _check_int(capacity, "capacity", 1, MAX_CAPACITY)
        if capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, got {capacity}")
        _check_int(first_id, "first_id", 1, MAX_ID)
        limit = MAX_ID + 1 if id_limit is None else id_limit
        _check_int(limit, "id_limit", first_id, MAX_ID + 1)
        if name is None:
            name = f"saga-{os.getpid()}-{secrets.token_hex(4)}"
        pname = _posix_name(name)
        out = _ffi.new("ssm_segment **")
        pid = os.getpid()
        rc = _lib.ssm_create(pname, capacity, first_id, limit, pid, _process_token(pid), out)
        if rc == _EEXIST:
            raise SegmentExistsError(name)
        if rc == _ESYS:
            raise _sys_error(name, "creation")
        if rc != _OK:  # pragma: no cover - arguments were checked above
            raise SupervisorError(f"ssm_create({name!r}) returned {rc}")
        return cls._wrap(out[0], name, creator=True)

    @classmethod
    def attach(
        cls, name: str, capacity: int | None = None, timeout: float = 1.0
    ) -> SharedState:
        """Attach to an existing segment.  If `capacity` is given, a segment of
        another capacity raises :class:`LayoutMismatchError`.  A segment whose
        creator is still initialising it is waited for up to `timeout` s."""
        pname = _posix_name(name)
        out = _ffi.new("ssm_segment **")
        deadline = time.monotonic() + timeout
        while True:
            rc = _lib.ssm_attach(pname, out)
            if rc != _EUNINIT or time.monotonic() >= deadline:
                break
            time.sleep(0.001)  # creator is between ftruncate and writing the magic
        if rc == _ENOENT:
            raise SegmentNotFoundError(name)
        if rc == _ESYS:
            raise _sys_error(name, "attach")
        if rc in _MISMATCH:
            raise LayoutMismatchError(name, _MISMATCH[rc])
        if rc != _OK:  # pragma: no cover
            raise SupervisorError(f"ssm_attach({name!r}) returned {rc}")
        self = cls._wrap(out[0], name, creator=False)
        if capacity is not None and capacity != self._capacity:
            self.close()
            raise LayoutMismatchError(
                name, f"capacity is {self._capacity}, expected {capacity}"
            )
        return self

    @staticmethod
    def remove(name: str) -> bool:
        """Unlink a segment by name (e.g. one left by a killed creator).
        Returns False if there was none.  Processes still attached keep their
        mapping until they close."""
        rc = _lib.ssm_unlink(_posix_name(name))
        if rc == _ESYS:
            raise _sys_error(name, "unlink")
        return bool(rc == _OK)

    # -- properties -------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> str:
        """Where the segment's name lives on Linux (``/dev/shm/...``)."""
        return "/dev/shm/" + _posix_name(self._name).decode().lstrip("/")

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def is_creator(self) -> bool:
        return self._creator

    @property
    def closed(self) -> bool:
        return self._seg is _CLOSED

    @property
    def creator_pid(self) -> int:
        return int(_lib.ssm_creator_pid(self._live()))

    @property
    def creator_token(self) -> int:
        """The creator's start time in µs (0 if unknown): pid-reuse guard."""
        return int(_lib.ssm_creator_token(self._live()))

    def creator_alive(self) -> bool:
        """True if the process that created the segment still runs (same pid
        *and* same start time, so a reused pid does not count)."""
        return same_process(self.creator_pid, self.creator_token / 1e6, tolerance=2e-6)

    def _live(self) -> object:
        if self._seg is _CLOSED:
            raise SegmentClosedError(f"shared state {self._name!r} is closed in this process")
        return self._seg

    def _bad_call(self, saga_id: object) -> Exception:
        if self._seg is _CLOSED:
            return SegmentClosedError(f"shared state {self._name!r} is closed in this process")
        if isinstance(saga_id, bool) or not isinstance(saga_id, int):
            return TypeError(
                f"saga id must be an int, not {type(saga_id).__name__}: {saga_id!r}"
            )
        return ValueError(f"saga id must be between 1 and {MAX_ID}, got {saga_id}")

    # -- id counter ---------------------------------------------------------

    def next_id(self) -> int:
        """A fresh id, unique across every attached process."""
        try:
            r: int = _next_id(self._seg)
        except TypeError:
            raise self._bad_call(None) from None
        if r and r <= MAX_ID:
            return r
        return wait_at_fence(r, lambda: _next_id(self._seg), self)

    @property
    def id_limit(self) -> int:
        """The fence: no id at or past it is handed out."""
        return int(_id_limit(self._live()))

    def raise_id_limit(self, limit: int) -> int:
        """Move the fence up to `limit` (never down); returns the fence."""
        _check_int(limit, "limit", 1, MAX_ID + 1)
        return int(_raise_id_limit(self._live(), limit))

    def reserve_ids(self, n: int) -> range:
        """Reserve `n` consecutive fresh ids in one atomic step."""
        try:
            first: int = _reserve(self._seg, n)
        except (TypeError, OverflowError):
            if self._seg is _CLOSED:
                raise self._bad_call(None) from None
            _check_int(n, "n", 1, MAX_ID)
            raise
        if first == _AT_FENCE:
            first = wait_at_fence(first, lambda: _reserve(self._seg, n), self)
        if first:
            return range(first, first + n)
        _check_int(n, "n", 1, MAX_ID)
        raise IdOverflowError(
            f"reserving {n} ids would pass the maximum id {MAX_ID} of {self._name!r}"
        )

    def peek_next_id(self) -> int:
        """The id the counter will hand out next (ids below it were allocated)."""
        return int(_peek(self._live()))

    # -- claim table ----------------------------------------------------------

    def register(self, saga_id: int, foreign: bool = False) -> None:
        """Put an allocated id in flight.  Raises :class:`CapacityError` if its
        slot holds a live saga (never overwrites one), ``ValueError`` if the id
        was never allocated, is already registered, or is older than the id
        that now holds its slot.  `foreign`: an id another fleet node allocated
        (a saga taken over): neither its allocation nor that order is checked."""
        try:
            rc = (_adopt if foreign else _register)(self._seg, saga_id)
        except (TypeError, OverflowError):
            raise self._bad_call(saga_id) from None
        if rc == _OK:
            return
        if rc == _EFULL:
            if _state(self._seg, saga_id) == _lib.SSM_STATE_LIVE:
                raise ValueError(f"saga id {saga_id} is already registered and live")
            raise CapacityError(
                f"slot {saga_id % self._capacity} of {self._name!r} is held by a live "
                f"saga: cannot register id {saga_id} (capacity {self._capacity}); "
                "finish older sagas or create the segment with a larger capacity",
                self._capacity,
            )
        if saga_id <= 0 or saga_id > MAX_ID:
            raise self._bad_call(saga_id)
        if saga_id >= _peek(self._seg):
            raise ValueError(f"saga id {saga_id} was never allocated by {self._name!r}")
        raise ValueError(f"saga id {saga_id} is stale: a newer saga holds its slot")

    def acquire(self, max_tries: int = 64) -> int:
        """Allocate a fresh id and register it in one call (the spawn path).
        Ids whose slot is still held by a long-lived saga are skipped.  Raises
        :class:`CapacityError` when `capacity` sagas are in flight."""
        try:
            r: int = _acquire(self._seg, max_tries)
        except (TypeError, OverflowError):
            if self._seg is _CLOSED:
                raise self._bad_call(None) from None
            _check_int(max_tries, "max_tries", 1, 2**63)
            raise
        if r <= MAX_ID:
            return r
        if r == _AT_FENCE:
            return wait_at_fence(r, lambda: _acquire(self._seg, max_tries), self)
        if r == _ACQ_OVERFLOW:
            raise IdOverflowError(f"the id counter of {self._name!r} passed its maximum {MAX_ID}")
        raise CapacityError(
            f"the claim table of {self._name!r} is full: {self._capacity} sagas in flight "
            "(or every tried slot held by a live saga); wait for sagas to end or "
            "use a larger capacity",
            self._capacity,
        )

    def claim(self, saga_id: int) -> bool:
        """Take the right to emit `saga_id`'s terminal outcome.  True exactly
        once per registered id; False for the loser, a stale id (slot reused),
        or an id never registered."""
        try:
            rc: int = _claim(self._seg, saga_id)
        except (TypeError, OverflowError):
            raise self._bad_call(saga_id) from None
        return rc == 1 or self._claim_lost(rc, saga_id)

    def _claim_lost(self, rc: int, saga_id: int) -> bool:
        """The slow side of claim(): False for a loser, errors for bad ids."""
        if rc == 0:  # (a claimed slot of this id: the loser, whatever its range)
            if saga_id >= _peek(self._seg) and _state(self._seg, saga_id) != \
                    _lib.SSM_STATE_CLAIMED:
                raise ValueError(f"saga id {saga_id} was never allocated by {self._name!r}")
            return False
        raise self._bad_call(saga_id)

    def reopen(self, saga_id: int) -> bool:
        """Undo the claim on `saga_id`, putting it back in flight.  Only for a
        claim whose holder died before anything of it became visible (the
        supervisor inherits such claims); True if it was claimed and is live
        again."""
        try:
            rc = _lib.ssm_reopen(self._seg, saga_id)
        except (TypeError, OverflowError):
            raise self._bad_call(saga_id) from None
        if rc < 0:
            raise self._bad_call(saga_id)
        return bool(rc == 1)

    def state(self, saga_id: int) -> SagaSlotState:
        """'live', 'claimed', or 'unknown' (never registered, or slot reused)."""
        try:
            return _STATE_NAMES[_state(self._seg, saga_id)]
        except (TypeError, OverflowError):
            raise self._bad_call(saga_id) from None

    def is_claimed(self, saga_id: int) -> bool:
        """True if `saga_id`'s terminal was claimed and its slot not yet reused."""
        try:
            return bool(_state(self._seg, saga_id) == 2)
        except (TypeError, OverflowError):
            raise self._bad_call(saga_id) from None

    def in_flight(self) -> int:
        """Number of registered, unclaimed sagas."""
        return int(_in_flight(self._live()))

    def noop(self) -> int:
        """A one-argument C call that does nothing (benchmark floor)."""
        return int(_noop1(self._seg))

    # -- lifecycle --------------------------------------------------------------

    def close(self) -> None:
        """Unmap the segment in this process (idempotent).  Does not unlink."""
        seg = self._seg
        if seg is _CLOSED:
            return
        self._seg = _CLOSED
        if _lib.ssm_get_primary() == seg:
            _lib.ssm_set_primary(_ffi.NULL)
            self.__class__ = SharedState  # the fast methods must not run any more
        _lib.ssm_detach(seg)

    def unlink(self) -> None:
        """Remove the segment's name (creator only; idempotent).  Attached
        processes keep working on their mapping until they close it."""
        if not self._creator:
            raise SupervisorError(
                f"only the creator (pid {self.creator_pid if not self.closed else '?'}) "
                f"unlinks segment {self._name!r}; this process attached to it"
            )
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
            rc = _lib.ssm_unlink(_posix_name(self._name))
            if rc == _ESYS:
                raise _sys_error(self._name, "unlink")

    def __enter__(self) -> SharedState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self._creator:
            self.unlink()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        role = "creator" if self._creator else "attached"
        return f"<SharedState {self._name!r} capacity={self._capacity} {role} {state}>"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # Pickling sends the *name*: the receiving process attaches on unpickle.
        return (SharedState.attach, (self._name,))


class _PrimaryState(SharedState):
    """The process's primary segment: the same API, the hot calls bound to the
    segment kept in a C global (0-1 argument cffi calls)."""

    __slots__ = ()

    def next_id(self) -> int:
        r: int = _next_id_p()
        if r and r <= MAX_ID:
            return r
        if self._seg is _CLOSED:  # pragma: no cover - close() resets the class
            raise self._bad_call(None)
        return wait_at_fence(r, _next_id_p, self)

    def claim(self, saga_id: int) -> bool:
        try:
            rc: int = _claim_p(saga_id)
        except (TypeError, OverflowError):
            raise self._bad_call(saga_id) from None
        return rc == 1 or self._claim_lost(rc, saga_id)

    def is_claimed(self, saga_id: int) -> bool:
        try:
            return bool(_state_p(saga_id) == 2)
        except (TypeError, OverflowError):
            raise self._bad_call(saga_id) from None


__all__ = ["SharedState", "MAX_ID", "MAX_CAPACITY", "LAYOUT_VERSION", "noop", "SagaSlotState"]
