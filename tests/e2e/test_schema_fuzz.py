"""Schema fuzzing of every namespace's OpenAPI and of the OAuth protocol endpoints, through the entrypoint.

For every operation, generated requests -- valid and invalid with a token that holds every
scope, valid ones with no credential -- must never produce a 5xx, and every response must be
one the document declares: its status code, its content type, its body's schema and its
headers (Schemathesis's response checks). Every rejection is an RFC 9457 problem+json, and an
anonymous call to a guarded operation is refused with 401 whatever else is wrong with it.

The OAuth protocol endpoints (token, revocation, introspection, authorization) speak OAuth's
formats and are left out of the auth document; they are fuzzed from a description built from
the provider's discovery document, with the responses RFC 6749, 7009 and 7662 allow.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nexus_ray.catalog import NAMESPACES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Bounded for a 2-core CI: about 400 operations over the nine documents (many of them health probes,
# which have nothing to generate and so run once); operations whose success has side effects run against
# the session's own stores. One anonymous example per guarded operation: the authorization sweeps check
# every route without a credential as well.
EXAMPLES = {"admin positive": 6, "admin negative": 3, "anonymous": 1}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
FORM = "application/x-www-form-urlencoded"


def _fuzz(operation, mode: GenerationMode, base_url: str, headers: dict[str, str], examples: int,
          expect_status: int | None = None, problems: bool = True) -> int:
    """Send up to ``examples`` generated requests to ``operation``; check each response; return how many."""
    calls = {"n": 0}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        calls["n"] += 1
        where = (case.method, case.formatted_path, response.status_code, response.text[:300])
        case.validate_response(response, checks=CHECKS)
        if expect_status is not None:
            assert response.status_code == expect_status, where
        if problems and response.status_code >= 400:
            content_type = response.headers.get("content-type")
            content_type = content_type[0] if isinstance(content_type, list) else content_type
            assert content_type == "application/problem+json", where
            body = response.json()
            assert body["status"] == response.status_code, where
            if response.status_code == 422:
                assert body["errors"] and all(e.get("field") for e in body["errors"]), where

    try:
        run()
    except Unsatisfiable:  # nothing to generate: invalid data for an operation without parameters or body
        assert mode == GenerationMode.NEGATIVE, operation.label
    return calls["n"]


def _guarded(operation) -> bool:
    return "x-required-scopes" in operation.definition.raw


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_fuzz_namespace(platform, bearer, namespace):
    base_url = f"{platform}/{namespace}"
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    admin = bearer("*", subject=f"fuzz-{namespace}")
    total = guarded = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        total += _fuzz(operation, GenerationMode.POSITIVE, base_url, admin, EXAMPLES["admin positive"])
        total += _fuzz(operation, GenerationMode.NEGATIVE, base_url, admin, EXAMPLES["admin negative"])
        if _guarded(operation):
            # Valid requests only: a body that is not even JSON is refused (422) before the guard runs.
            guarded += 1
            total += _fuzz(operation, GenerationMode.POSITIVE, base_url, {}, EXAMPLES["anonymous"], expect_status=401)
    _stop_what_outlives_the_fuzz(base_url, admin)
    assert total > 0
    if namespace in ("auth", "platform", "specialized"):
        assert guarded > 0


def _pages(c: httpx.Client, path: str):
    cursor = None
    while True:
        r = c.get(path, params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        yield from r.json()["items"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return


def _stop_what_outlives_the_fuzz(base_url: str, headers: dict[str, str]) -> None:
    """Cancel the route solves and delete the schedules the fuzz created: left alone, they would go on
    taking the cluster's CPUs (a solve for its time limit, a cron schedule a Ray job every minute)
    through the rest of the session."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as c:
        if base_url.endswith("/logistics"):
            for job in _pages(c, "/v1/routes/jobs"):
                if job["status"] in ("queued", "running"):
                    assert c.post(f"/v1/routes/jobs/{job['id']}/cancel").status_code in (200, 409)
        if base_url.endswith("/platform"):
            for schedule in _pages(c, "/v1/scheduler/schedules"):
                if schedule["created_by"].startswith("fuzz-"):
                    assert c.delete(f"/v1/scheduler/schedules/{schedule['id']}").status_code in (204, 404)


# -- The OAuth protocol endpoints, described from the discovery document ---------------------------


def _form(properties: dict[str, Any]) -> dict[str, Any]:
    return {"required": False, "content": {FORM: {"schema": {"type": "object", "properties": properties}}}}


def _protocol_document(discovery: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for the endpoints ``discovery`` names, with what OAuth lets each answer (JSON, never problem+json)."""
    issuer = discovery["issuer"].rstrip("/")

    def path(key: str) -> str:
        url = discovery[key]
        assert url.startswith(issuer + "/"), (key, url)
        return url[len(issuer):]

    string = {"type": "string", "maxLength": 200}
    error = {"description": "An OAuth error (RFC 6749 section 5.2)",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}}}
    errors = {status: error for status in ("400", "401", "429")}
    client = {"client_id": string, "client_secret": string}
    token_hint = {"token": string, "token_type_hint": {"enum": ["access_token", "refresh_token"]}}
    json_object = {"application/json": {"schema": {"type": "object"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "OAuth protocol endpoints of the discovery document", "version": "1"},
        "paths": {
            path("token_endpoint"): {"post": {
                "requestBody": _form({
                    "grant_type": {"enum": discovery["grant_types_supported"]},
                    "code": string, "redirect_uri": string, "code_verifier": string, "refresh_token": string,
                    "scope": {"enum": discovery["scopes_supported"]}, **client,
                }),
                "responses": {"200": {"description": "Tokens", "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/TokenResponse"}}}}, **errors},
            }},
            path("revocation_endpoint"): {"post": {
                "requestBody": _form({**token_hint, **client}),
                "responses": {"200": {"description": "Revoked (or unknown)", "content": json_object}, **errors},
            }},
            path("introspection_endpoint"): {"post": {
                "requestBody": _form({**token_hint, **client}),
                "responses": {"200": {"description": "What the token is", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["active"],
                               "properties": {"active": {"type": "boolean"}}}}}}, **errors},
            }},
            path("authorization_endpoint"): {"get": {
                "parameters": [
                    {"name": "response_type", "in": "query", "schema": {"enum": discovery["response_types_supported"]}},
                    {"name": "client_id", "in": "query", "schema": string},
                    {"name": "redirect_uri", "in": "query", "schema": string},
                    {"name": "scope", "in": "query", "schema": string},
                    {"name": "state", "in": "query", "schema": string},
                    {"name": "code_challenge", "in": "query", "schema": string},
                    {"name": "code_challenge_method", "in": "query",
                     "schema": {"enum": discovery["code_challenge_methods_supported"]}},
                    {"name": "prompt", "in": "query", "schema": {"enum": discovery["prompt_values_supported"]}},
                ],
                "responses": {
                    "200": {"description": "The sign-in page",
                            "content": {"text/html": {"schema": {"type": "string"}}}},
                    "302": {"description": "Back to the client with a code or an error"},
                    **errors,
                },
            }},
        },
        "components": {"schemas": {
            "OAuthError": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string", "pattern": "^[\\x20-\\x21\\x23-\\x5B\\x5D-\\x7E]+$"},
                "error_description": {"type": "string"}}},
            "TokenResponse": {"type": "object", "required": ["access_token", "token_type"], "properties": {
                "access_token": {"type": "string"}, "token_type": {"type": "string"},
                "expires_in": {"type": "integer"}, "refresh_token": {"type": "string"},
                "id_token": {"type": "string"}, "scope": {"type": "string"}}},
        }},
    }


def test_fuzz_oauth_protocol_endpoints(platform):
    base_url = f"{platform}/auth/v2/oauth"
    discovery = httpx.get(f"{base_url}/.well-known/openid-configuration", timeout=30).json()
    schema = schemathesis.openapi.from_dict(_protocol_document(discovery))
    paths = set()
    total = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        paths.add(operation.path)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            total += _fuzz(operation, mode, base_url, {}, EXAMPLES["admin positive"], problems=False)
    assert paths == {"/token", "/revoke", "/introspect", "/authorize"}
    assert total > 0
