"""auth-service-v2: an OAuth 2.0 / OpenID Connect provider.

Discovery, JWKS, authorization code with PKCE (S256 only), client credentials, rotating refresh
tokens with reuse detection, revocation (RFC 7009), introspection (RFC 7662), ID tokens, userinfo,
and the registration of clients. Its issuer is ``jwt_issuer``, the public URL of ``/auth/v2/oauth``;
its access tokens are the platform's JWTs, which the edge of every namespace verifies.

``models`` (schemas), ``service`` (logic; Python API below), ``protocol`` (the OAuth wire format:
parameters, client authentication, JSON errors, redirects, the sign-in page), ``views`` (routes).

The provider lives in API version v2 only: one issuer has one URL, and tokens carry it, so a copy of
the endpoints under v1 would be a second issuer whose tokens the edge refuses. ``/auth/v1/oauth``
keeps only the health routes every catalog version gets.

Python API (:mod:`.service`)::

    await register_client(name=, client_type=, redirect_uris=, allowed_scopes=, grant_types=,
                          grantor=principal)              -> client with its one-time client_secret
    await authenticate_client(client_id=, secret=, method=) -> Client
    await token(client=, params={"grant_type": ...})      -> token response
    await revoke(client=, params=) / await introspect(client=, params=)
    narrow(requested, allowance=, held=)                  -> the scopes a token gets
"""

from nexus_ray.deployments.auth.oauth import service
from nexus_ray.deployments.auth.oauth.views import router

routers = {"v2": router}
background = [service.purge_loop]

__all__ = ["background", "router", "routers", "service"]
