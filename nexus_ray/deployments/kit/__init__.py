"""The service kit: what every service would otherwise repeat, written once.

* :mod:`.settings` -- a service's own settings (``ServiceSettings`` + :func:`settings_of`);
* :mod:`.scopes`   -- its scopes, derived from the catalog (``scopes_of("session-mgr").read``);
* :mod:`.access`   -- "the user themself or an administrator" as a dependency;
* :mod:`.pages`    -- one page shape for every list endpoint (keyset), fetch-one-or-404;
* :mod:`.entities` -- per-entity live state in a bounded set of shard actors, and its client;
* :mod:`.calls`    -- calls to a service of another namespace over DeploymentHandles.
* :mod:`.idempotency` -- idempotency keys with Stripe's semantics (replay, errors included; expiry).
* :mod:`.loops`    -- the background loop of every sweep, retry and poll (a pass, drain, wake-up, failures
  logged by type and counted in ``nexus_background_passes_total``).

A service package (``deployments/<namespace>/<service>/``) holds ``models.py``,
``service.py``, ``views.py`` and, when it has them, ``settings.py`` and ``migrations/``.
"""
