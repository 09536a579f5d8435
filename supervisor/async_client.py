"""``supervisor.async_client``: the path :class:`AsyncSagaClient` had before
the clients moved to :mod:`supervisor.clients`; kept for code that imports
it by this path (``from supervisor import AsyncSagaClient`` is the public one)."""

from supervisor.clients.async_client import AsyncSagaClient

__all__ = ["AsyncSagaClient"]
