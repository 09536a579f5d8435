"""The clients of a running supervisor, from any process of the same user:
:class:`~supervisor.clients.client.SagaClient` (its connection core: encoding,
class shipping, slot give-back, pushed outcomes, events) and
:class:`~supervisor.clients.async_client.AsyncSagaClient`, the same core for
asyncio.  Both are exported from :mod:`supervisor`."""
