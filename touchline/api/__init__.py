"""The HTTP API: profiles and the next best action on request, and events for sites without Kafka.

- :mod:`~touchline.api.server`: ``touchline serve`` and ``touchline run --api``;
- :mod:`~touchline.api.app`: the endpoints (Starlette), errors as JSON;
- :mod:`~touchline.api.worker`: the engine thread every request goes through, in batches;
- :mod:`~touchline.api.outputs`: where its decisions, dead letters and deliveries go;
- :mod:`~touchline.api.guard`: API keys and rate limits;
- :mod:`~touchline.api.schema`: request validation and the OpenAPI document.

Imported only by the commands that serve it: the engine does not load the web stack.
"""
