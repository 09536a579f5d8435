"""What a launcher registers with an engine — a saga kind, a local-target
handler, a trigger — as typed records.

The facade checks the arguments once and builds a record; the engine
applies it here, however it came: from the caller's thread (the engine in
this process), or shipped with dill over the supervisor process's start
pipe or control socket (the engine in a process of its own).  One place
decides what a registration does, on either engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor._engine.inbox import AddTrigger
from supervisor.saga import Event, Saga, Target


@dataclass(frozen=True)
class KindRegistration:
    """``register_kind``'s arguments, checked: `limit` is (max_in_flight,
    queue_timeout) or None; the fleet options as :class:`FleetSide` takes them."""

    name: str
    factory: Callable[[dict[str, Any]], Saga]
    replay: bool
    limit: tuple[int, float | None] | None
    orphan_timeout: float | None
    portable: bool
    fleet_limit: int | None


@dataclass(frozen=True)
class HandlerRegistration:
    """``register_handler``'s: `fn(command, saga_id, step)` answers `target`."""

    target: Target
    fn: Callable[[Any, int, int], Any]


@dataclass(frozen=True)
class TriggerRegistration:
    """``add_trigger``'s: spawn ``factory(event)`` for events matching `predicate`."""

    factory: Callable[[Event], Saga]
    predicate: Callable[[Event], bool]


Registration = KindRegistration | HandlerRegistration | TriggerRegistration
REGISTRATIONS = (KindRegistration, HandlerRegistration, TriggerRegistration)


def apply(engine: Any, reg: Registration) -> None:
    """Register `reg` with `engine` (any thread; before start or while it
    runs: a trigger added to a running engine goes through its inbox)."""
    if isinstance(reg, KindRegistration):
        engine.kinds[reg.name] = (reg.factory, reg.replay)
        if reg.limit is not None:
            engine.limits[reg.name] = reg.limit
        else:
            engine.limits.pop(reg.name, None)
        engine.fleet.register(reg.name, reg.orphan_timeout, reg.portable, reg.fleet_limit)
    elif isinstance(reg, HandlerRegistration):
        engine.handlers[Target(reg.target)] = reg.fn
    elif isinstance(reg, TriggerRegistration):
        if engine.life.state in ("new", "starting"):
            engine.triggers.append((reg.factory, reg.predicate))
        else:
            engine.inbox.post(AddTrigger(reg.factory, reg.predicate))
    else:
        raise TypeError(f"not a registration: {type(reg).__name__}")
