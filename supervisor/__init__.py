"""saga-supervisor: run many durable sagas at once.

The public surface is re-exported here; modules are private unless named in
``__all__``.  Names are imported on first use (PEP 562), so that ``import
supervisor`` and the read-only CLI commands (``health``, ``sagas``) do not
pay for multiprocess, dill, apsw and cffi.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
# set here and nowhere else: the CLI checks it to tell this package from
# another one installed over it under the same import name (supervisord)
__saga_supervisor__ = True

# A library logs and lets the application decide where it goes (the logging
# HOWTO's advice): every logger is named under "supervisor"; without a
# configuration nothing is printed. serve(), `saga-supervisor run` and the
# supervisor process configure logging (names and times) when the
# application has not.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_WHERE = {
    "LIFECYCLE_KINDS": "supervisor.saga",
    "SAGA_ACTION_FAILED": "supervisor.saga",
    "SAGA_COMPLETED": "supervisor.saga",
    "SAGA_FAILED": "supervisor.saga",
    "SAGA_QUEUED": "supervisor.saga",
    "SAGA_SPAWN_FAILED": "supervisor.saga",
    "SAGA_STARTED": "supervisor.saga",
    "Done": "supervisor.saga",
    "Event": "supervisor.saga",
    "Failed": "supervisor.saga",
    "FrameError": "supervisor.frames",
    "IssueCmd": "supervisor.saga",
    "LogCorruptError": "supervisor.store.sqlite",
    "LogError": "supervisor.store.sqlite",
    "NotRunningError": "supervisor.errors",
    "Outcome": "supervisor.saga",
    "RestartIntensityError": "supervisor.errors",
    "Retry": "supervisor.saga",
    "Saga": "supervisor.saga",
    "SagaAction": "supervisor.saga",
    "SagaClient": "supervisor.clients.client",
    "AsyncSagaClient": "supervisor.clients.async_client",
    "SagaContext": "supervisor.saga",
    "SchemaTooNewError": "supervisor.store.sqlite",
    "SpawnError": "supervisor.errors",
    "StepInfo": "supervisor.saga",
    "Subscription": "supervisor.common.subscription",
    "Supervisor": "supervisor.facade.supervisor",
    "SupervisorProcess": "supervisor.process",
    "SupervisorGoneError": "supervisor.errors",
    "SupervisorCrashedError": "supervisor.errors",
    "Target": "supervisor.saga",
    "Wait": "supervisor.saga",
    "CapacityError": "supervisor.errors",
    "IdOverflowError": "supervisor.errors",
    "LayoutMismatchError": "supervisor.errors",
    "SegmentClosedError": "supervisor.errors",
    "SegmentExistsError": "supervisor.errors",
    "SegmentNotFoundError": "supervisor.errors",
    "SharedMemoryError": "supervisor.errors",
    "SharedState": "supervisor.shmem.state",
    "SupervisorError": "supervisor.errors",
    "HostStartError": "supervisor.errors",
    "UnknownSagaError": "supervisor.errors",
    "SagaNotLoggedError": "supervisor.errors",
    "IdFenceError": "supervisor.errors",
    "ConnectionLostError": "supervisor.errors",
    "FencedError": "supervisor.errors",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers
    from supervisor.errors import ConnectionLostError, FencedError
    from supervisor.errors import IdFenceError
    from supervisor.errors import SagaNotLoggedError
    from supervisor.clients.async_client import AsyncSagaClient
    from supervisor.clients.client import SagaClient
    from supervisor.errors import SupervisorGoneError
    from supervisor.process import SupervisorProcess
    from supervisor.common.subscription import Subscription
    from supervisor.facade.supervisor import Supervisor
    from supervisor.errors import HostStartError, UnknownSagaError
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
    from supervisor.store.sqlite import LogCorruptError, LogError, SchemaTooNewError
    from supervisor.saga import (
        LIFECYCLE_KINDS,
        SAGA_ACTION_FAILED,
        SAGA_COMPLETED,
        SAGA_FAILED,
        SAGA_QUEUED,
        SAGA_SPAWN_FAILED,
        SAGA_STARTED,
        Done,
        Event,
        Failed,
        IssueCmd,
        Outcome,
        Retry,
        Saga,
        SagaAction,
        SagaContext,
        StepInfo,
        Target,
        Wait,
    )
    from supervisor.shmem.state import SharedState


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "AsyncSagaClient",
    "LIFECYCLE_KINDS",
    "SAGA_ACTION_FAILED",
    "SAGA_COMPLETED",
    "SAGA_FAILED",
    "SAGA_QUEUED",
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
    "Retry",
    "Saga",
    "SagaAction",
    "SagaClient",
    "SagaContext",
    "SchemaTooNewError",
    "SpawnError",
    "StepInfo",
    "Subscription",
    "Supervisor",
    "SupervisorProcess",
    "SupervisorGoneError",
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
    "HostStartError",
    "UnknownSagaError",
    "SagaNotLoggedError",
    "IdFenceError",
    "ConnectionLostError",
    "FencedError",
]
