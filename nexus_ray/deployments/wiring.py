"""The composition root of the edge: which services provide what the edge needs.

The edge stands below the services and imports none of them; at start-up (every app built by
:func:`nexus_ray.deployments.app.build_app`, the CLI's token commands, the tests) this module
registers

* key-service as the edge's key source: verification keys for every bearer token, and the
  signer of :func:`nexus_ray.edge.tokens.issue`;
* auth-service's legacy sessions as the resolver of opaque bearer tokens.

Whatever namespace an ingress serves, its edge verifies platform tokens and legacy sessions,
so every process wires both (reading their tables, not calling their namespaces: a
verification must not be a network hop).
"""

from __future__ import annotations

from nexus_ray.edge import security, tokens


def wire_edge() -> None:
    """Register the services the edge relies on (idempotent)."""
    from nexus_ray.deployments.auth.auth import service as legacy_sessions
    from nexus_ray.deployments.specialized.keys import service as key_service

    tokens.use_key_source(key_service)
    security.use_session_resolver(legacy_sessions.session_principal)
