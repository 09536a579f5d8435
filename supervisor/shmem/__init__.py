"""The shared segment: the only module that imports the compiled C module
(:mod:`.binding`: build stamp, bound functions, C status codes as typed
exceptions) and :class:`~.state.SharedState`, the lock-free id counter and
terminal-claim table every process attaches.  Only its creator unlinks it."""
