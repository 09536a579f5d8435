"""What crosses from the launcher to its supervisor process and back, other
than requests: user code (kind factories, handlers, triggers) as dill, and
the supervisor process's errors, by name."""

from __future__ import annotations

import builtins
import importlib
import io
import sys
import types
from typing import Any

import dill

import supervisor.errors as errors
from supervisor.errors import SupervisorError

__all__ = ["ship", "named_error", "error_of"]


class _Pickler(dill.Pickler):  # type: ignore[misc]
    """dill, but an importable module is pickled by name: dill pickles the
    modules of a project (not installed in site-packages) by value, which
    fails on their native handles.  Lambdas and closures still travel by
    value; what they name from modules is imported in the supervisor."""

    dispatch = dill.Pickler.dispatch.copy()


def _save_module(pickler: Any, obj: types.ModuleType) -> None:
    if obj.__name__ != "__main__" and sys.modules.get(obj.__name__) is obj:
        pickler.save_reduce(importlib.import_module, (obj.__name__,), obj=obj)
    else:
        dill._dill.save_module(pickler, obj)


_Pickler.dispatch[types.ModuleType] = _save_module


def ship(what: str, obj: Any) -> bytes:
    """`obj` with dill, for the supervisor process; SupervisorError if not."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, recurse=True).dump(obj)
    except Exception as exc:
        raise SupervisorError(f"{what} cannot be shipped to the supervisor process: "
                              f"{type(exc).__name__}: {exc}") from exc
    return buf.getvalue()


def error_of(name: str, message: str) -> BaseException:
    """The exception another process named (``"LogCorruptError"``, ...),
    made back into that exception where it is one of ours or a built-in one
    (so ``except LogError`` works across processes as within one); a name we
    do not know is a :class:`SupervisorError`.  The one table of errors by
    name, for the clients' answers and the supervisor process's reports."""
    for where in (errors, builtins):
        cls = getattr(where, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:  # (UnknownSagaError and its kin read their saga id from the message)
                exc: BaseException = cls(message)
            except TypeError:  # its __init__ takes other arguments
                exc = cls.__new__(cls)
                Exception.__init__(exc, message)
            if isinstance(exc, errors.LogError):
                exc.path = message.removeprefix("saga log ").partition(": ")[0]
            return exc
    return SupervisorError(message)


def named_error(text: str) -> BaseException:
    """``"LogCorruptError: <message>"``, as the supervisor process reports an
    error on its status line, made back into that exception (see :func:`error_of`)."""
    name, _, message = text.partition(": ")
    exc = error_of(name, message)
    if type(exc) is SupervisorError and name != "SupervisorError":
        return SupervisorError(f"the supervisor process failed: {text}")
    return exc
