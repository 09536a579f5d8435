"""The command line (``saga-supervisor``, ``python -m supervisor``): one
module per group of commands, behind :mod:`supervisor.__main__`, which parses
the arguments.  They read the data dir, the health file and the log; they
reach a running supervisor only through its control socket (a client)."""
