"""Wire formats between processes, beside :mod:`supervisor.frames` (the host
pipe) and :mod:`supervisor.protocol` (worker messages): how a saga is encoded
and its class shipped to workers and supervisor processes (:mod:`.codec`), and
how objects and errors cross by name (:mod:`.ship`)."""
