"""saga-supervisor: run many durable sagas at once.

The public surface is re-exported here; modules are private unless named in
``__all__``.
"""

from __future__ import annotations

from supervisor.client import SagaClient
from supervisor._engine.outcomes import Subscription
from supervisor.core import Supervisor
from supervisor.errors import (
    CapacityError,
    IdOverflowError,
    LayoutMismatchError,
    NotRunningError,
    RestartIntensityError,
    SegmentClosedError,
    SegmentExistsError,
    SegmentNotFoundError,
    SharedMemoryError,
    SpawnError,
    SupervisorCrashedError,
    SupervisorError,
)
from supervisor.frames import FrameError
from supervisor.log import LogCorruptError, LogError, SchemaTooNewError
from supervisor.saga import (
    LIFECYCLE_KINDS,
    SAGA_ACTION_FAILED,
    SAGA_COMPLETED,
    SAGA_FAILED,
    SAGA_SPAWN_FAILED,
    SAGA_STARTED,
    Done,
    Event,
    Failed,
    IssueCmd,
    Outcome,
    Saga,
    SagaAction,
    SagaContext,
    StepInfo,
    Target,
    Wait,
)
from supervisor.shm import SharedState

__version__ = "0.1.0"

__all__ = [
    "LIFECYCLE_KINDS",
    "SAGA_ACTION_FAILED",
    "SAGA_COMPLETED",
    "SAGA_FAILED",
    "SAGA_SPAWN_FAILED",
    "SAGA_STARTED",
    "Done",
    "Event",
    "Failed",
    "FrameError",
    "IssueCmd",
    "LogCorruptError",
    "LogError",
    "NotRunningError",
    "Outcome",
    "RestartIntensityError",
    "Saga",
    "SagaAction",
    "SagaClient",
    "SagaContext",
    "SchemaTooNewError",
    "SpawnError",
    "StepInfo",
    "Subscription",
    "Supervisor",
    "SupervisorCrashedError",
    "Target",
    "Wait",
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
