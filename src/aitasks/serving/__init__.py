"""Real-time serving: the streaming feature updater and the recommendation HTTP service.

* :mod:`.feast_codec` writes and reads Feast's Redis online-store encoding without importing the Feast
  SDK (entity keys, murmur3 field names, ``Value`` and ``Timestamp`` protobufs), so the service starts
  in about a second and the updater writes exactly what ``get_online_features`` reads.
* :mod:`.state` folds listening events into a user's bounded daily buckets and derives the
  ``user_features`` row the batch features compute.
* :mod:`.updater` consumes Redis Streams (consumer group, at-least-once) and applies each event
  exactly once: dedupe by event id, features, history, embedding and ack in one Lua script.
* :mod:`.service` is the FastAPI app (``aitasks serve-api``): online features, the index's model,
  the current index plus the live-added tracks, filters, popularity fallback, hot reload.

Importing this package is cheap: no Feast, MLflow or torch import happens before a function needs it.
"""
