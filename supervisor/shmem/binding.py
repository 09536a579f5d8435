"""The binding layer of the shared-memory hot path: the one module that loads
the compiled cffi module (``_sagashm``), checks its build stamp, binds its
functions to module globals once, and turns its status codes into names.
The module's one call that is not about the segment, :func:`send_now` (a
send that keeps the GIL), is bound here too, for the same reason.

cffi's ``ffi``/``lib`` are untyped, so the names here are ``Any`` to mypy;
:mod:`supervisor.shmem.state` builds the typed API on them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal

import supervisor._sagashm as _sagashm
from supervisor.common.procs import start_time
from supervisor.errors import IdFenceError, IdOverflowError, SharedMemoryError

# The binding layer: cffi's `ffi`/`lib` are untyped, so this module is the one
# place that deals in them; mypy is strict everywhere else.
_ffi = _sagashm.ffi
_lib = _sagashm.lib

EXPECTED_BUILD_STAMP = 4
if _lib.SSM_BUILD_STAMP != EXPECTED_BUILD_STAMP:  # pragma: no cover - stale build
    raise ImportError(
        f"supervisor._sagashm was built from another version (stamp "
        f"{_lib.SSM_BUILD_STAMP}, expected {EXPECTED_BUILD_STAMP}): reinstall the package"
    )

MAX_ID: int = int(_lib.ssm_max_id())
MAX_CAPACITY: int = int(_lib.ssm_max_capacity())
LAYOUT_VERSION: int = int(_lib.ssm_layout_version())

# Hot-path functions bound once to module globals (no attribute lookups per call).
_next_id = _lib.ssm_next_id
_reserve = _lib.ssm_reserve
_register = _lib.ssm_register
_adopt = _lib.ssm_adopt
_acquire = _lib.ssm_acquire
_claim = _lib.ssm_claim
_state = _lib.ssm_state
_in_flight = _lib.ssm_in_flight
_peek = _lib.ssm_peek_next_id
_noop = _lib.ssm_noop
_noop1 = _lib.ssm_noop1
_next_id_p = _lib.ssm_next_id_p
_claim_p = _lib.ssm_claim_p
_state_p = _lib.ssm_state_p
_send_now = _lib.ssm_send_now

_OK = _lib.SSM_OK
_ENOENT = _lib.SSM_ENOENT
_EEXIST = _lib.SSM_EEXIST
_ESYS = _lib.SSM_ESYS
_EMAGIC = _lib.SSM_EMAGIC
_EVERSION = _lib.SSM_EVERSION
_ESIZE = _lib.SSM_ESIZE
_EFULL = _lib.SSM_EFULL
_ERANGE = _lib.SSM_ERANGE
_EOVERFLOW = _lib.SSM_EOVERFLOW
_EUNINIT = _lib.SSM_EUNINIT
_ECAPACITY = _lib.SSM_ECAPACITY
_ACQ_FULL = int(_ffi.cast("uint64_t", _EFULL))
_AT_FENCE = int(_ffi.cast("uint64_t", _lib.SSM_EFENCE))  # above MAX_ID
_id_limit = _lib.ssm_id_limit
_raise_id_limit = _lib.ssm_raise_id_limit
_ACQ_OVERFLOW = int(_ffi.cast("uint64_t", _EOVERFLOW))
_STATE_NAMES: dict[int, Literal["unknown", "live", "claimed"]] = {
    _lib.SSM_STATE_UNKNOWN: "unknown",
    _lib.SSM_STATE_LIVE: "live",
    _lib.SSM_STATE_CLAIMED: "claimed",
}

SagaSlotState = Literal["unknown", "live", "claimed"]

_CLOSED = object()  # stands in for the segment pointer after close(): cffi rejects it



def send_now(fd: int, data: bytes) -> int:
    """The bytes of `data` the socket `fd` takes now (0: none), without
    blocking and without giving the GIL up (``ssm_send_now``); OSError for a
    broken connection (EPIPE, ECONNRESET, ...)."""
    n = int(_send_now(fd, data, len(data)))
    if n < 0:
        raise OSError(-n, os.strerror(-n))
    return n


def _posix_name(name: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"segment name must be a str, not {type(name).__name__}: {name!r}")
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare or len(bare) > 200 or "\x00" in bare:
        raise ValueError(
            f"invalid segment name {name!r}: use 1-200 characters without '/' or NUL"
        )
    return ("/" + bare).encode()


def _check_int(value: object, what: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}: {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{what} must be between {minimum} and {maximum}, got {value}")
    return value


def _process_token(pid: int) -> int:
    """Start time of `pid` in microseconds: with the pid, names one process."""
    started = start_time(pid)
    return 0 if started is None else int(started * 1_000_000)


def _sys_error(name: str, what: str) -> SharedMemoryError:
    err = _ffi.errno
    return SharedMemoryError(name, what, err, os.strerror(err))


def unlink_if_creator(name: bytes, creator_pid: int) -> None:
    # weakref.finalize / atexit hook: never unlink from a forked child.
    if os.getpid() == creator_pid:
        _lib.ssm_unlink(name)


FENCE_WAIT = 10.0  # seconds an allocation waits for the ids' fence to rise


def wait_at_fence(r: int, again: Callable[[], int], state: Any) -> int:
    """A hot call returned `r`, no id: at the fence, retry `again` (backing
    off) until it gives an id, for up to FENCE_WAIT seconds; past that, or on
    overflow, raise."""
    deadline = None
    pause = 0.0005
    while r == _AT_FENCE:
        now = time.monotonic()
        if deadline is None:
            deadline = now + FENCE_WAIT
        elif now >= deadline:
            raise IdFenceError(
                f"no id could be handed out from {state.name!r} for {FENCE_WAIT}s: the "
                f"counter is at the fence ({state.id_limit}), which its supervisor raises after writing a "
                "higher mark to its log; is it running, and can it write its log?")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
        r = again()
        if r and r <= MAX_ID:
            return r
    raise IdOverflowError(f"the id counter of {state.name!r} passed its maximum {MAX_ID}")
