"""Length-prefixed frames, and the host protocol (version 2) on top of them.

Every frame on every pipe is ``u32 big-endian length`` + ``length`` bytes.
Worker pipes carry a pickled batch (list of message tuples) per frame.  The
host pipe carries host frames, documented in ``docs/host-protocol.md``::

    u32 length | u8 version (=2) | u8 type | u64 saga_id | u32 step | u16 attempt | JSON

Version 1 is the same without ``attempt``; both are read (a version-1 answer
has attempt 0: "whichever attempt is current"), and a supervisor sends
version 2 unless told to speak version 1 to an old host (``host_protocol=1``).
``length`` counts everything after itself.  Types: CMD (supervisor -> host,
payload: the command), EVENT (host -> supervisor, payload
``{"kind": str, "data": any}``), ACTION_FAILED (host -> supervisor, payload
``{"reason": str}``).  saga_id 0 marks an event addressed to no saga (a domain
event for the bus).
"""

from __future__ import annotations

import struct
from typing import Any

from supervisor.common.jsontext import is_one_json_value, loads as json_loads
from supervisor.errors import SupervisorError

MAX_FRAME = 16 * 1024 * 1024
# What one saga (its pickled state and snapshot) or one event's data may be:
# a request carrying it is one control-socket frame, with room for the rest
MAX_PAYLOAD = MAX_FRAME - (64 << 10)
# What one read of a pipe or socket asks for.  A pipe holds 64 KiB, so a
# larger read of one never returns more; and a buffer of 128 KiB or more
# comes from mmap: an mmap, an mremap and an munmap for every read.
READ_SIZE = 1 << 16
PROTOCOL_VERSION = 2
PROTOCOL_VERSIONS = (1, 2)
T_CMD = 1
T_EVENT = 2
T_ACTION_FAILED = 3
MAX_ATTEMPT = 0xFFFF

_LEN = struct.Struct(">I")
_HOST_HDR_V1 = struct.Struct(">IBBQI")  # length, version, type, saga_id, step
_HOST_HDR = struct.Struct(">IBBQIH")  # ... and attempt (version 2)
HOST_HDR_SIZE_V1 = _HOST_HDR_V1.size - 4  # header bytes counted in `length`
HOST_HDR_SIZE = _HOST_HDR.size - 4
_HOST_BODY_V1 = struct.Struct(">BBQI")
_ATTEMPT = struct.Struct(">H")
_HOST_BODY = struct.Struct(">BBQIH")
_TYPES = frozenset((T_CMD, T_EVENT, T_ACTION_FAILED))
_pack = _HOST_HDR.pack


# a decoded host frame: (type, saga_id, step, attempt, payload); attempt is 0
# in a version-1 frame.  A plain tuple: it is built once per answer.
HostFrame = tuple[int, int, int, int, bytes]


class FrameError(SupervisorError):
    """A frame could not be decoded (oversized, truncated, bad version or
    payload).  `fatal` means the byte stream cannot be resynchronised."""

    def __init__(self, message: str, fatal: bool) -> None:
        self.fatal = fatal
        super().__init__(message)


class FrameReader:
    """Accumulates bytes and yields whole frame payloads."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length > self._max:
                raise FrameError(
                    f"frame of {length} bytes exceeds the maximum of {self._max}", fatal=True
                )
            end = pos + 4 + length
            if end > n:
                break
            out.append(bytes(buf[pos + 4:end]))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def host_frame(kind: int, saga_id: int, step: int, payload: bytes, attempt: int = 1,
               version: int = PROTOCOL_VERSION) -> bytes:
    """One host frame.  `attempt` travels in version 2 only (capped at 65535)."""
    if version == 2 and attempt <= MAX_ATTEMPT:
        return _pack(HOST_HDR_SIZE + len(payload), 2, kind, saga_id, step, attempt) + payload
    if version == 1:
        return _HOST_HDR_V1.pack(HOST_HDR_SIZE_V1 + len(payload), 1, kind, saga_id,
                                 step) + payload
    return _pack(HOST_HDR_SIZE + len(payload), version, kind, saga_id, step,
                 min(attempt, MAX_ATTEMPT)) + payload


def parse_host_frame(body: bytes) -> HostFrame:
    """Decode a host frame body (version 1 or 2)."""
    if len(body) >= HOST_HDR_SIZE and body[0] == 2:  # the hot path: one unpack
        _v, kind, saga_id, step, attempt = _HOST_BODY.unpack_from(body)
        if kind in _TYPES:
            return kind, saga_id, step, attempt, body[HOST_HDR_SIZE:]
    if len(body) < HOST_HDR_SIZE_V1:
        raise FrameError(f"host frame of {len(body)} bytes is shorter than its header",
                         fatal=False)
    version, kind, saga_id, step = _HOST_BODY_V1.unpack_from(body)
    if version == 2:
        if len(body) < HOST_HDR_SIZE:
            raise FrameError(f"version-2 host frame of {len(body)} bytes is shorter than "
                             "its header", fatal=False)
        (attempt,) = _ATTEMPT.unpack_from(body, HOST_HDR_SIZE_V1)
        payload = body[HOST_HDR_SIZE:]
    elif version == 1:
        attempt, payload = 0, body[HOST_HDR_SIZE_V1:]
    else:
        raise FrameError(f"host frame has protocol version {version}, expected one of "
                         f"{PROTOCOL_VERSIONS}", fatal=False)
    if kind not in _TYPES:
        raise FrameError(f"host frame has unknown type {kind}", fatal=False)
    return kind, saga_id, step, attempt, payload


def parse_host(body: bytes) -> tuple[int, int, int, bytes]:
    """Split a host frame body into (type, saga_id, step, payload); see
    :func:`parse_host_frame` for the attempt number too."""
    kind, saga_id, step, _attempt, payload = parse_host_frame(body)
    return kind, saga_id, step, payload


def json_object_text(payload: bytes, what: str) -> str:
    """`payload` as text, once it is known to be one JSON object; else
    :class:`FrameError` as from :func:`decode_json_object`.  The text need
    not be decoded into objects: only checked (for the log, which keeps
    only JSON)."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        text = ""
    if text[:1] == "{" and is_one_json_value(text):
        return text
    decode_json_object(payload, what)  # raises, naming the fault (or it is valid after all)
    return text


def decode_json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        value = json_loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FrameError(f"{what} payload is not valid JSON: {type(exc).__name__}: "
                         f"{str(exc)[:200]}", fatal=False) from None
    if not isinstance(value, dict):
        raise FrameError(f"{what} payload must be a JSON object, got "
                         f"{type(value).__name__}", fatal=False)
    return value
