"""saga-supervisor: run many durable sagas at once.

The public surface is re-exported here; modules are private unless named in
``__all__``.
"""

from __future__ import annotations

from supervisor.errors import (
    CapacityError,
    IdOverflowError,
    LayoutMismatchError,
    SegmentClosedError,
    SegmentExistsError,
    SegmentNotFoundError,
    SharedMemoryError,
    SupervisorError,
)
from supervisor.shm import SharedState

__version__ = "0.1.0"

__all__ = [
    "CapacityError",
    "IdOverflowError",
    "LayoutMismatchError",
    "SegmentClosedError",
    "SegmentExistsError",
    "SegmentNotFoundError",
    "SharedMemoryError",
    "SharedState",
    "SupervisorError",
]
