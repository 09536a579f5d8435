"""The facade: the one :class:`Supervisor` and the two links to its engine.

:mod:`~supervisor.facade.supervisor` checks arguments, keeps the context
manager, ``serve()``, ``atexit``, the asyncio wrappers and the log fallback
of ``wait()``, once.  It talks to its engine through a *link*
(:mod:`~supervisor.facade.link`): :mod:`~supervisor.facade.thread_link`, the
engine as a thread of the caller's process, or
:mod:`~supervisor.facade.process_link`, the engine in a supervisor process of
its own (:mod:`~supervisor.facade.serve` is that process's main).
"""
