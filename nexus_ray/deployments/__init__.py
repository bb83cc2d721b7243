"""One package per namespace, one package per service: how a service is written.

A service is its routes and its logic; everything else comes from the kit
(:mod:`nexus_ray.deployments.kit`) and the edge. Its package,
``nexus_ray/deployments/<namespace>/<slug_with_underscores>/`` (the catalog's
:attr:`~nexus_ray.catalog.Service.package`), holds:

* ``models.py`` -- pydantic schemas, a family per entity: ``XBase``/``XCreate``/``XUpdate``/``XRead``;
* ``service.py`` -- the logic: async functions with keyword-only arguments that return ``XRead``
  models (or ``Page[XRead]``), no HTTP in them;
* ``views.py`` -- thin routes that translate HTTP to a service call and back;
* ``settings.py`` -- when it has settings of its own: a :class:`~nexus_ray.deployments.kit.settings.ServiceSettings`
  subclass read with ``settings_of(...)``;
* ``migrations/NNNN_name.sql`` -- when it has tables: found through the catalog, applied in
  version order with the core's (:mod:`nexus_ray.stores.postgres`);
* ``__init__.py`` -- exports ``router`` (or ``routers = {"v1": ..., "v2": ...}``), optionally
  ``background`` (async callables run for the app's lifetime: event consumers, loops) and
  ``exports`` (functions other namespaces may call with :func:`nexus_ray.deployments.kit.calls.call`).

The kit, so no service repeats it:

* **Guards.** Every route has ``authorize(SCOPES.read)`` (``SCOPES = scopes_of("<service name>")``)
  or ``public()``; ``self_or_admin(SCOPES.write, SCOPES.admin)`` for "the user themself or an
  administrator"; the app refuses to start with an unguarded route.
* **Lists.** ``page: PageRequest = page_params()`` in, ``Page[XRead]`` out (keyset cursors);
  ``one_or_404(...)`` for fetch-one.
* **Errors.** Raise :mod:`nexus_ray.exceptions` errors; the edge renders problem+json.
* **Stores.** :func:`nexus_ray.stores.postgres.transaction` / ``pool``;
  :func:`nexus_ray.stores.documents.database`; :func:`nexus_ray.stores.cache.redis_client`;
  events with :func:`nexus_ray.stores.events.emit` inside the transaction of the change.
* **Keyed hashes** of anything secret: :mod:`nexus_ray.edge.digests`.
* **Live state.** An entity class (:class:`nexus_ray.actors.PersistentActor`) reached through
  :class:`nexus_ray.actors.client.EntityClient`: many entities per shard actor, or an actor
  of its own for a few large ones.
* **Compute.** Plain functions in :mod:`nexus_ray.compute`, run with ``remote``/``map_tasks``.

Where a service runs (its namespace's ingress, or a deployment of its own) is placement
(:mod:`nexus_ray.runtime.placement`), not code.
"""
