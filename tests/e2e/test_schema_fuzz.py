"""Schema fuzzing of every namespace's OpenAPI through the public entrypoint (schemathesis).

For every operation, generated requests -- valid and invalid, with a token that
holds every scope and with none -- must never produce a 5xx, and every rejection
must be an RFC 9457 problem+json.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from nexus_ray.catalog import NAMESPACES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Operations whose success has side effects on the shared platform are still fuzzed:
# they run against this test session's own stores.
EXAMPLES_AUTHENTICATED = 20
EXAMPLES_ANONYMOUS = 4


def _fuzz(operation, base_url: str, headers: dict[str, str], examples: int) -> int:
    calls = {"n": 0}

    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        calls["n"] += 1
        case.validate_response(response, checks=[not_a_server_error])
        if response.status_code >= 400:
            content_type = response.headers.get("content-type")
            content_type = content_type[0] if isinstance(content_type, list) else content_type
            assert content_type == "application/problem+json", (
                case.method, case.formatted_path, response.status_code, response.text[:300])
            body = response.json()
            assert body["status"] == response.status_code
            if response.status_code == 422:
                assert all(e.get("field") for e in body.get("errors", [])), body

    run()
    return calls["n"]


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_fuzz_namespace(platform, bearer, namespace):
    base_url = f"{platform}/{namespace}"
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    admin = bearer("*", subject=f"fuzz-{namespace}")
    total = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        total += _fuzz(operation, base_url, admin, EXAMPLES_AUTHENTICATED)
        total += _fuzz(operation, base_url, {}, EXAMPLES_ANONYMOUS)
    assert total > 0
