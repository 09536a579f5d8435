"""The worker pipe's messages: opcodes and action codes, in one place.

Every frame on a worker pipe is a pickled *batch*: a list of tuples whose
first item is an opcode.  The supervisor sends one batch per loop turn and
worker; a worker answers one batch per batch it read.

Supervisor -> worker (``Op``)::

    (CLS, class_id, dill_bytes)               a saga class, shipped once
    (START, saga_id, class_id, state, name)   rebuild the saga, call start()
    (EVENT, saga_id, kind, data_or_json, is_json, event_saga_id, step, version,
     dispatched)                              `dispatched`: its commands sent so far
    (SENT, saga_id, dispatched)               commands up to `dispatched` went out
    (REPLAY, saga_id, class_id, state, name, steps, inherited)
        rebuild the saga, replay start() and the logged events of `steps`
        [(index, target, cmd_json, output_json | None)], comparing each command
        with the logged one; `inherited`: the supervisor holds the claim
    (COMP, saga_id, [(step, target, cmd_json), ...])   call compensate() in order
    (DROP, saga_id)                           forget the saga
    (STOP,)                                   finish the batch, then exit

Worker -> supervisor::

    (ACT, saga_id, code, arg, consumed_json)  code CMD: arg = (target, cmd_json,
        name[, policy[, last]]): `policy` the step's retry policy or None, `last`
        True for IssueCmd(last=True) (see :func:`cmd_policy`, :func:`cmd_last`)
    (COMPS, saga_id, [(step, target, cmd_json) | (step, None, None)], error)
    (HEARTBEAT, sagas_held)
    (READY, pid)                              first message: imports are done
    (REPLAYED, saga_id, code, arg, reissue)   the live action after a replay;
        `reissue`: it is the logged pending step, to be sent again
    (ACK, batches)                            last in every reply: input batches
        handled so far (a batch not acknowledged when a worker dies holds the
        saga that may have killed it)

Opcodes are plain ints (class attributes, not an enum): they are compared on
the hot path of both processes.
"""

from __future__ import annotations

from typing import Any, Final


class Op:
    """Opcodes of worker-pipe messages."""

    CLS: Final = 0
    START: Final = 1
    EVENT: Final = 2
    COMP: Final = 3
    DROP: Final = 4
    STOP: Final = 5
    SENT: Final = 6
    REPLAY: Final = 7
    ACT: Final = 10
    COMPS: Final = 11
    HEARTBEAT: Final = 12
    READY: Final = 13
    REPLAYED: Final = 14
    ACK: Final = 15


# messages that run user code in the worker (START, EVENT, REPLAY, COMP)
USER_CODE_OPS: Final = frozenset({Op.START, Op.EVENT, Op.REPLAY, Op.COMP})


class Act:
    """What a saga callback returned, as carried in ACT and REPLAYED."""

    CMD: Final = 0
    WAIT: Final = 1
    DONE: Final = 2
    FAILED: Final = 3


def cmd_policy(arg: tuple[Any, ...]) -> Any:
    """The retry policy a CMD's `arg` carries: (attempts, backoff, max
    backoff, step timeout), or None."""
    return arg[3] if len(arg) > 3 else None


def cmd_last(arg: tuple[Any, ...]) -> bool:
    """Whether a CMD's `arg` is a saga's last step (``IssueCmd(last=True)``):
    its answer ends the saga in the supervisor, not in the worker."""
    return len(arg) > 4 and arg[4] is True


def kept_after_last(has_comp: bool, listens: frozenset[str]) -> bool:
    """Whether the worker keeps a saga once it issued its last step: only a
    saga it may still have to compensate or offer events it listens to (the
    supervisor then sends DROP when the saga ends); any other is forgotten
    at once, and nothing more of it ever reaches the worker."""
    return has_comp or bool(listens)


# How a saga's state travels in START/REPLAY: its __dict__ with pickle, or the
# whole object with dill (custom pickling, __slots__).
STATE_DICT: Final = 0
STATE_DILL: Final = 1

# Seconds of silence after which an idle worker says it is alive.
HEARTBEAT_EVERY: Final = 0.5

# The largest frame on a worker's pipes, either way: one frame is one turn's
# batch of messages, which may carry many sagas' states (each of which must
# fit a host frame or control-socket frame, 16 MiB; see wire.codec).
MAX_BATCH: Final = 1 << 30
