"""The authorization sweep, shared by the in-process test (tests/integration/test_edge.py) and the one through
the real entrypoint (tests/e2e/test_authorization_sweep.py): both take an ``httpx.AsyncClient`` on the public paths.

The route table is derived from the nine namespace apps, so a route a service adds is swept the day it is added.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from nexus_ray.catalog import NAMESPACES
from nexus_ray.config import get_settings
from nexus_ray.deployments.specialized import keys
from nexus_ray.edge import tokens
from nexus_ray.edge.security import api_routes, route_guard

# Every route open to anyone, beyond the health probes app.py gives every service and namespace.
# A new public route fails the sweep until it is listed here: being public is a decision, not a default.
PUBLIC = {
    ("POST", "/auth/v1/auth/login"),
    ("POST", "/auth/v1/auth/logout"),
    ("POST", "/auth/v1/auth/exchange"),
    ("GET", "/auth/v2/oauth/.well-known/openid-configuration"),
    ("GET", "/auth/v2/oauth/jwks"),
    ("GET", "/auth/v2/oauth/authorize"),
    ("POST", "/auth/v2/oauth/authorize"),
    ("POST", "/auth/v2/oauth/token"),
    ("POST", "/auth/v2/oauth/revoke"),
    ("POST", "/auth/v2/oauth/introspect"),
    ("POST", "/auth/v1/users"),
    ("POST", "/auth/v1/users/verify-email"),
    ("GET", "/platform/v1/gateway/openapi"),
    ("GET", "/specialized/v1/keys/jwks"),
    ("GET", "/specialized/v1/pv-keys/public-key"),
    # A parcel's progress by its (unguessable) tracking number: statuses and times only, no personal data.
    ("GET", "/commerce/v1/shipping/tracking/{tracking_number}"),
}
_HEALTH = re.compile(r"^/[a-z]+(/v\d+/[a-z0-9-]+)?/health/(live|ready)$")

# Objects some route creates other than by a POST on their collection: collection -> creating route.
CREATED_ELSEWHERE = {("auth", "/v1/auth/sessions"): ("POST", "/v1/auth/login")}


@dataclass(frozen=True)
class Route:
    """One operation of the route table: a method on a route template, with the route's guard."""

    namespace: str
    method: str
    template: str  # as the app knows it: /v1/pv-keys/assets/{asset_id}
    guard: tuple[str, tuple[str, ...]] | None
    params: tuple[str, ...]

    @property
    def public_path(self) -> str:
        return f"/{self.namespace}{self.template}"

    def path(self, values: dict[str, str] | None = None) -> str:
        path = self.public_path
        for p in self.params:
            path = path.replace("{" + p + "}", (values or {}).get(p, "x1"))
        return path


def build_apps() -> dict:
    """The nine namespace apps, built (not started): what the route table and the OpenAPI documents come from."""
    from nexus_ray.deployments.app import build_app

    return {ns: build_app(ns) for ns in NAMESPACES}


def route_table(apps: dict) -> list[Route]:
    """Every operation (route and method) of every namespace app, HEAD aside."""
    table = []
    for ns, app in apps.items():
        for r in api_routes(app.routes):
            params = tuple(p.name for p in r.dependant.path_params)
            for method in sorted(r.methods - {"HEAD"}):
                table.append(Route(ns, method, r.path_format, route_guard(r), params))
    return table


def is_health(route: Route) -> bool:
    return bool(_HEALTH.match(route.public_path)) and route.method == "GET"


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def bad_tokens() -> dict[str, str]:
    """Tokens the edge must refuse: each differs from a valid one in one way."""
    s = get_settings()
    key = await keys.current_signer("ES256")
    now = int(time.time())
    base = {"iss": s.jwt_issuer, "aud": s.jwt_audience, "sub": "u1", "scope": "*", "iat": now, "exp": now + 60}
    good = tokens.issue("u1", ["*"])
    head, body, sig = good.split(".")
    return {
        "bad signature": f"{head}.{body}.{sig[:-6]}AAAAAA",
        "expired": jwt.encode({**base, "exp": now - 300}, key.private_key, algorithm="ES256",
                              headers={"kid": key.kid}),
        "alg none": _b64({"alg": "none"}) + "." + _b64(base) + ".",
        "wrong audience": jwt.encode({**base, "aud": "elsewhere"}, key.private_key, algorithm="ES256",
                                     headers={"kid": key.kid}),
        "garbage": "abc.def",
    }


async def sweep_credentials(client: httpx.AsyncClient, table: list[Route], bearer) -> int:
    """Refusals for every operation: guarded ones refuse no credential, bad ones and a wrong scope; public ones
    are on the allowlist. Returns how many operations were checked (every one, or it fails)."""
    bad = await bad_tokens()
    checked = 0
    unlisted = []
    for route in table:
        path = route.path()
        assert route.guard is not None, route
        if route.guard[0] == "public":
            if not is_health(route) and (route.method, route.public_path) not in PUBLIC:
                unlisted.append(f"{route.method} {route.public_path}")
            r = await client.request(route.method, path)
            assert r.status_code < 500 and r.status_code != 403, (route, r.status_code, r.text[:200])
            checked += 1
            continue
        scopes = route.guard[1]
        r = await client.request(route.method, path)
        assert r.status_code == 401, (path, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == "Bearer"
        for name, t in bad.items():
            r = await client.request(route.method, path, headers={"Authorization": f"Bearer {t}"})
            assert r.status_code == 401, (path, name, r.status_code)
        r = await client.request(route.method, path, headers={"X-API-Key": "nxk_deadbeef_notarealkeynotarealkey00"})
        assert r.status_code == 401, (path, "unknown api key")
        r = await client.request(route.method, path, headers=bearer("nothing:useful"))
        assert r.status_code == 403, (path, r.status_code)
        assert r.json()["required_scopes"] == list(scopes)
        checked += 1
    assert not unlisted, f"public routes not on the allowlist (tests/sweep.py PUBLIC): {unlisted}"
    return checked


# -- Objects belong to someone -----------------------------------------------------------------------


@dataclass
class User:
    """A registered user of the sweep, with a token holding every non-administrative scope."""

    user_id: str
    username: str
    password: str
    headers: dict[str, str]
    account_scopes: list[str]  # what the account's roles grant: API keys can carry no more


class Owners:
    """Creates objects as user A through the route table's own creating routes, generically.

    An object's id is found from the route templates: ``{asset_id}`` in ``/v1/pv-keys/assets/{asset_id}`` is
    created by ``POST /v1/pv-keys/assets`` (or the route :data:`CREATED_ELSEWHERE` names), and its id read
    from the response. Bodies are built from the OpenAPI request schemas: required fields only, ids of A's
    objects where a field names one, A for fields that name the owner.
    """

    def __init__(self, client: httpx.AsyncClient, apps: dict, table: list[Route], owner: User) -> None:
        self.client = client
        self.table = table
        self.owner = owner
        self._item = 0  # which item of an array is being made (see _value)
        self.docs = {ns: app.openapi() for ns, app in apps.items()}
        self.ids: dict[tuple[str, str], str | None] = {}  # (namespace, param) -> A's object id (None: cannot)
        self.refused: list[str] = []  # creations that failed: their objects are swept with a made-up id
        self.named: set[str] = set()  # ids of A's objects the last body built names

    def _creator(self, namespace: str, param: str) -> tuple[Route, str] | None:
        for route in self.table:
            if route.namespace != namespace or "{" + param + "}" not in route.template:
                continue
            collection = route.template.split("/{" + param + "}", 1)[0]
            method, template = CREATED_ELSEWHERE.get((namespace, collection), ("POST", collection))
            for candidate in self.table:
                if (candidate.namespace, candidate.method, candidate.template) == (namespace, method, template):
                    return candidate, collection
        return None

    async def object_id(self, namespace: str, param: str) -> str | None:
        """The id of an object of A that ``{param}`` names in ``namespace``, created on first use."""
        if param == "user_id":
            return self.owner.user_id
        key = (namespace, param)
        if key not in self.ids:
            self.ids[key] = None  # a creator that needs its own kind of object does not recurse forever
            found = self._creator(namespace, param)
            if found is not None:
                creator, _ = found
                values = {p: await self.object_id(namespace, p) or "x1" for p in creator.params}
                body = await self.body(creator, actor=self.owner)
                r = await self.client.request(creator.method, creator.path(values), json=body,
                                              headers=self.owner.headers)
                if r.status_code < 300:
                    created = r.json()
                    self.ids[key] = str(created.get(param) or created.get("id") or "") or None
                else:
                    self.refused.append(f"{creator.method} {creator.public_path}: {r.status_code} {r.text[:200]}")
        return self.ids[key]

    def _operation(self, route: Route) -> dict[str, Any]:
        return self.docs[route.namespace]["paths"].get(route.template, {}).get(route.method.lower(), {})

    def _resolve(self, namespace: str, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.docs[namespace]["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema

    async def body(self, route: Route, *, actor: User) -> Any:
        """A valid body for ``route`` sent by ``actor`` about A's objects, or None when it takes none."""
        self.named = set()
        content = self._operation(route).get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        if schema is None:
            return None
        return await self._value(route.namespace, "", schema, actor)

    async def _value(self, namespace: str, name: str, schema: dict[str, Any], actor: User) -> Any:
        schema = self._resolve(namespace, schema)
        if "anyOf" in schema:
            schema = self._resolve(namespace, next(s for s in schema["anyOf"] if s.get("type") != "null"))
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:  # the n-th item of an array takes the n-th value: an entry's lines get both sides
            return schema["enum"][self._item % len(schema["enum"])]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            return {p: await self._value(namespace, p, schema["properties"][p], actor)
                    for p in schema.get("required", [])}
        if kind == "array":
            items = schema.get("items", {"type": "string"})
            made = []
            for n in range(max(1, schema.get("minItems", 0))):
                self._item = n
                made.append(await self._value(namespace, name, items, actor))
            self._item = 0
            return made
        if kind == "integer":
            return max(int(schema.get("minimum", 1)), 60)
        if kind == "number":
            return float(schema.get("minimum", 1))
        if kind == "boolean":
            return True
        return await self._string(namespace, name, schema, actor)

    async def _string(self, namespace: str, name: str, schema: dict[str, Any], actor: User) -> str:
        if name == "username":
            return self.owner.username
        if name in ("password", "current_password"):
            return self.owner.password
        if name == "holder" or name.startswith("to_"):  # what the sender gives itself: a key, an asset
            return actor.user_id
        if name in ("owner", "from_holder", "user_id", "subject"):
            return self.owner.user_id
        if name == "currency":  # a code the services know: the sweep is about whose objects, not about currencies
            return "USD"
        if name in ("scopes", "scope") and self.owner.account_scopes:
            return self.owner.account_scopes[0]
        if name.endswith("_id"):
            found = await self.object_id(namespace, name)
            if found:
                self.named.add(name)
                return found
        fmt = schema.get("format")
        if fmt == "email":
            return f"sweep-{uuid.uuid4().hex[:8]}@example.com"
        if fmt == "uuid":
            return str(uuid.uuid4())
        if fmt == "date-time":
            return "2030-01-01T00:00:00Z"
        if fmt == "ipvanyaddress":
            return "203.0.113.9"
        pattern = schema.get("pattern")
        candidate = f"sweep{uuid.uuid4().hex[:6]}"
        if pattern and not re.search(pattern, candidate):
            candidate = _matching(pattern)
        return candidate.ljust(schema.get("minLength", 0), "x")[: schema.get("maxLength", 64)]

    async def parameters(self, route: Route, actor: User) -> dict[str, dict[str, Any]]:
        """Valid values of the route's path, query and header parameters: A's object ids where they name one."""
        found: dict[str, dict[str, Any]] = {"path": {}, "query": {}, "header": {}}
        for param in self._operation(route).get("parameters", []):
            where, name = param["in"], param["name"]
            if where == "path":
                found["path"][name] = await self.object_id(route.namespace, name)
            if where in found and not found[where].get(name) and (where == "path" or param.get("required")):
                found[where][name] = str(await self._value(route.namespace, name, param.get("schema", {}), actor))
        return found


def _matching(pattern: str) -> str:
    """A string that matches ``pattern`` (an id made to the shape a path or field demands)."""
    import warnings

    from hypothesis import strategies as st
    from hypothesis.errors import NonInteractiveExampleWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        return st.from_regex(pattern, fullmatch=True).filter(lambda v: v.isprintable() and "/" not in v).example()


async def register(client: httpx.AsyncClient, bearer, scopes: list[str]) -> User:
    """A new user account, through the public registration route, and a token for it with ``scopes``."""
    username = f"sweep-{uuid.uuid4().hex[:10]}"
    password = f"Sweep {uuid.uuid4().hex} pass!"
    r = await client.post("/auth/v1/users", json={"username": username, "email": f"{username}@example.com",
                                                   "password": password})
    assert r.status_code == 201, r.text
    user_id = str(r.json()["user_id"])
    headers = bearer(*scopes, subject=user_id)
    roles = await client.get(f"/auth/v1/users/{user_id}/roles", headers=headers)
    assert roles.status_code == 200, roles.text
    return User(user_id, username, password, headers, roles.json()["scopes"])


_ORDER = {"GET": 0, "POST": 1, "PUT": 1, "PATCH": 1, "DELETE": 2}


async def sweep_ownership(client: httpx.AsyncClient, apps: dict, table: list[Route], bearer) -> dict[str, Any]:
    """As user B, every route that takes an object id, on user A's objects: each must be refused (403/404).

    Both users hold every non-administrative scope the table names: what separates them is ownership.
    Reads go first and deletions last, so that a wrongly allowed change cannot hide later checks.
    Routes that take no id in their path but whose body names one of A's objects are checked too (409 is
    also a refusal there). Returns {"checked": n, "routes": how many to check, "owned": routes tried on a real
    object of A, "by body": the routes checked for their body, "failures": [...], "not created": [...]}.
    """
    scopes = sorted({s for r in table if r.guard and r.guard[0] == "scopes" for s in r.guard[1]
                     if not s.endswith(":admin")})
    a = await register(client, bearer, scopes)
    b = await register(client, bearer, scopes)
    owners = Owners(client, apps, table, a)
    guarded = [r for r in table if r.guard and r.guard[0] == "scopes"]
    for route in guarded:  # every kind of object A can have, before B acts
        for p in route.params:
            await owners.object_id(route.namespace, p)
    # Routes that name one of A's objects in their body: issuing oneself a key on another's asset.
    in_body = set()
    for route in guarded:
        if not route.params and await owners.body(route, actor=b) is not None and owners.named:
            in_body.add(route)
    with_ids = sorted((r for r in table if r.params or r in in_body),
                      key=lambda r: (_ORDER.get(r.method, 1), r.public_path))
    failures, owned, checked = [], [], 0
    for route in with_ids:
        if all([await owners.object_id(route.namespace, p) for p in route.params]):
            owned.append(f"{route.method} {route.public_path}")
        # A's objects where they exist, made-up ids of the right shape where not: refused either way, never 422.
        params = await owners.parameters(route, actor=b)
        body = await owners.body(route, actor=b)
        kwargs = {"json": body} if body is not None else {}
        r = await client.request(route.method, route.path(params["path"]), params=params["query"],
                                 headers={**params["header"], **b.headers}, **kwargs)
        checked += 1
        # Creating what names A's object (an asset already registered) may also be refused as a conflict.
        if r.status_code not in (403, 404) and not (route in in_body and r.status_code == 409):
            failures.append(f"{route.method} {route.public_path}: {r.status_code} {r.text[:160]}")
    return {"checked": checked, "owned": owned, "failures": failures, "routes": len(with_ids),
            "by body": sorted(f"{r.method} {r.public_path}" for r in in_body),
            "not created": owners.refused}
