"""Small pieces every layer uses, depending on nothing but the public
types: argument checks at the boundary (:mod:`.checks`), a one-lock future,
the subscription queue both engines return, a rate-limited log, a process's
identity (pid and start time), JSON through json's C scanner."""
