"""``supervisor.client``: the path :class:`SagaClient` had before the
clients moved to :mod:`supervisor.clients`; kept for code that imports it
by this path (``from supervisor import SagaClient`` is the public one)."""

from supervisor.clients.client import SagaClient, control_address

__all__ = ["SagaClient", "control_address"]
