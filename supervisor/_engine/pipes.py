"""Writing a peer's buffer to its pipe without blocking: one way, for the
host and for the workers.  Loop thread only."""

from __future__ import annotations

import os
import selectors
from collections.abc import Callable
from typing import Any, Protocol


class Peer(Protocol):
    wfd: int
    outbuf: bytearray
    want_write: bool


def drain(sel: selectors.BaseSelector, peer: Peer, on_writable: Callable[[int], Any]
          ) -> OSError | None:
    """Write what `peer.outbuf` holds; when the pipe is full, wait for
    writability in the selector (`on_writable` is called then), and stop
    waiting once the buffer is empty.  A write error drops the buffer and is
    returned (the caller decides what the peer's death means)."""
    try:
        while peer.outbuf:
            n = os.write(peer.wfd, peer.outbuf)
            del peer.outbuf[:n]
    except BlockingIOError:
        if not peer.want_write:
            peer.want_write = True
            sel.register(peer.wfd, selectors.EVENT_WRITE, on_writable)
        return None
    except OSError as exc:
        peer.outbuf.clear()
        return exc
    if peer.want_write:
        peer.want_write = False
        sel.unregister(peer.wfd)
    return None
