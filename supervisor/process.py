"""``SupervisorProcess``: a name for ``Supervisor(..., engine="process")``,
kept for code that names it.  There is one :class:`Supervisor`; the engine
in a supervisor process of its own is its link
(:mod:`supervisor.facade.process_link`)."""

from __future__ import annotations

import os
from typing import Any

from supervisor.errors import SupervisorGoneError
from supervisor.facade.supervisor import ORPHAN, Supervisor

__all__ = ["SupervisorProcess", "SupervisorGoneError", "ORPHAN"]


class _OnProcessEngine(type):
    def __instancecheck__(cls, obj: object) -> bool:  # any Supervisor(engine="process")
        return isinstance(obj, Supervisor) and obj.engine == "process"


class SupervisorProcess(Supervisor, metaclass=_OnProcessEngine):
    """``Supervisor(data_dir, ..., engine="process")``, said outright:
    ``SupervisorProcess(data_dir, workers=2, host=[...], orphan="stop",
    **options)``.  ``isinstance(Supervisor(..., engine="process"),
    SupervisorProcess)`` holds too."""

    def __init__(self, data_dir: str | os.PathLike[str], workers: int = 2,
                 host: list[str] | None = None, *, engine: str = "process",
                 **options: Any) -> None:
        if engine != "process":
            raise ValueError(f"SupervisorProcess runs engine='process', got engine={engine!r}")
        super().__init__(data_dir, workers, host, engine="process", **options)
