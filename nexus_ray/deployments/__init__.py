"""One package per namespace, one module (or package) per service.

How a service is written (see :mod:`nexus_ray.deployments.app` for how it is mounted):

* **Where.** ``nexus_ray/deployments/<namespace>/<slug_with_underscores>.py`` -- or a
  package of that name with ``models.py`` (pydantic schemas: ``XBase``/``XCreate``/
  ``XUpdate``/``XRead``), ``service.py`` (logic: async functions with keyword-only
  arguments, no HTTP in them) and ``views.py`` (thin routes) -- exporting ``router``
  (or ``routers = {"v1": ..., "v2": ...}``) and optionally ``background``.
* **Guards.** Every route has ``authorize("<namespace>:<slug>:<action>")`` or
  ``public()``; the app refuses to start otherwise.
* **Errors.** Raise :mod:`nexus_ray.exceptions` errors; the edge renders problem+json.
* **Stores.** :func:`nexus_ray.stores.postgres.transaction` / ``pool``;
  :func:`nexus_ray.stores.documents.database`; :func:`nexus_ray.stores.cache.redis_client`;
  events with :func:`nexus_ray.stores.events.emit` inside the transaction of the change.
  Tables come from SQL migrations in ``nexus_ray/stores/migrations``.
* **Live state.** :class:`nexus_ray.actors.PersistentActor` with ``get_or_create``.
* **Compute.** Plain functions in :mod:`nexus_ray.compute`, run with ``remote``/``map_tasks``.
"""
