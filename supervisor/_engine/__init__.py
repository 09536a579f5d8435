"""The engine behind :class:`supervisor.Supervisor`: a private package, one
module per responsibility.  Its only entry is the inbox (:mod:`.inbox`), its
only exits are outcomes and subscriptions (:mod:`.exits`) and bus events (:mod:`.bus`); see
``docs/architecture.md`` for the map and the data flow.

Every module but ``inbox`` and ``exits`` runs on the loop thread only.
"""
