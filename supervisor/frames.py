"""Length-prefixed frames, and the host protocol (version 1) on top of them.

Every frame on every pipe is ``u32 big-endian length`` + ``length`` bytes.
Worker pipes carry a pickled batch (list of message tuples) per frame.  The
host pipe carries host frames, documented in ``docs/host-protocol.md``::

    u32 length | u8 version (=1) | u8 type | u64 saga_id | u32 step | JSON payload

``length`` counts everything after itself.  Types: CMD (supervisor -> host,
payload: the command), EVENT (host -> supervisor, payload
``{"kind": str, "data": any}``), ACTION_FAILED (host -> supervisor, payload
``{"reason": str}``).  saga_id 0 marks an event addressed to no saga (a domain
event for the bus).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from supervisor.errors import SupervisorError

MAX_FRAME = 16 * 1024 * 1024
PROTOCOL_VERSION = 1
T_CMD = 1
T_EVENT = 2
T_ACTION_FAILED = 3

_LEN = struct.Struct(">I")
_HOST_HDR = struct.Struct(">IBBQI")  # length, version, type, saga_id, step
HOST_HDR_SIZE = _HOST_HDR.size - 4  # header bytes counted in `length`
_HOST_BODY = struct.Struct(">BBQI")


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


def host_frame(kind: int, saga_id: int, step: int, payload: bytes) -> bytes:
    return _HOST_HDR.pack(HOST_HDR_SIZE + len(payload), PROTOCOL_VERSION, kind,
                          saga_id, step) + payload


def parse_host(body: bytes) -> tuple[int, int, int, bytes]:
    """Split a host frame body into (type, saga_id, step, payload)."""
    if len(body) < HOST_HDR_SIZE:
        raise FrameError(f"host frame of {len(body)} bytes is shorter than its header",
                         fatal=False)
    version, kind, saga_id, step = _HOST_BODY.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise FrameError(f"host frame has protocol version {version}, expected "
                         f"{PROTOCOL_VERSION}", fatal=False)
    if kind not in (T_CMD, T_EVENT, T_ACTION_FAILED):
        raise FrameError(f"host frame has unknown type {kind}", fatal=False)
    return kind, saga_id, step, body[HOST_HDR_SIZE:]


def decode_json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FrameError(f"{what} payload is not valid JSON: {type(exc).__name__}: "
                         f"{str(exc)[:200]}", fatal=False) from None
    if not isinstance(value, dict):
        raise FrameError(f"{what} payload must be a JSON object, got "
                         f"{type(value).__name__}", fatal=False)
    return value
