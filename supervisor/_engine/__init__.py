"""The engine behind :class:`supervisor.Supervisor`: a private package, one
module per responsibility.  Its only entry is the inbox (:mod:`.inbox`), its
only exits are outcomes (:mod:`.outcomes`) and bus events (:mod:`.bus`); see
``docs/architecture.md`` for the map and the data flow.

Every module but ``inbox`` and ``outcomes`` runs on the loop thread only.
"""
