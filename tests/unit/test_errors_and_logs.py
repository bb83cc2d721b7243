"""Errors survive pickling and render as problem+json; logs never carry secrets."""

import json
import logging
import pickle
import random
import re

import pytest

from nexus_ray import logs
from nexus_ray.edge.security import has_scope
from nexus_ray.exceptions import Conflict, NexusError, RateLimited, Unauthorized, ValidationFailed


def test_errors_pickle_across_processes():
    for err in (Conflict("taken", extra={"id": 1}), RateLimited.retry_after(7, "principal"), Unauthorized("x")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert back.problem() == err.problem()
        assert back.headers == err.headers


def test_problem_body_shape():
    body = ValidationFailed.for_field("items[0].qty", "must be positive").problem("/commerce/v1/x")
    assert body["status"] == 422
    assert body["type"].endswith("/validation")
    assert body["errors"][0]["field"] == "items[0].qty"
    assert body["instance"] == "/commerce/v1/x"
    assert RateLimited.retry_after(3, "address").headers == {"Retry-After": "3"}
    assert NexusError().status == 500


def test_scope_grants():
    assert has_scope({"commerce:orders:read"}, "commerce:orders:read")
    assert has_scope({"commerce:*"}, "commerce:orders:read")
    assert has_scope({"commerce:orders:*"}, "commerce:orders:read")
    assert has_scope({"*"}, "anything:at:all")
    assert not has_scope({"commerce:orders:read"}, "commerce:orders:write")
    assert not has_scope({"commerce:orders"}, "commerce:orders:read")
    assert not has_scope({"finance:*"}, "commerce:orders:read")


def test_redaction_masks_secrets():
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    text = (
        f"Authorization: Bearer {jwt_like} key=nxk_abcd1234_SECRETSECRETSECRETSECRET "
        'password="hunter2" {"client_secret": "s3cr3t"} '
        "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----"
    )
    out = logs.redact(text)
    for secret in (jwt_like, "SECRETSECRET", "hunter2", "s3cr3t", "MIIB"):
        assert secret not in out


def test_json_log_line_has_request_id_and_no_secret(capsys):
    record = logging.makeLogRecord({"name": "nexus_ray.test", "levelname": "INFO", "levelno": 20,
                                    "msg": "login password=%s", "args": ("hunter2",)})
    logs.RedactingFilter().filter(record)
    token = logs.request_id_var.set("rid-123")
    try:
        line = logs.JsonFormatter().format(record)
    finally:
        logs.request_id_var.reset(token)
    data = json.loads(line)
    assert data["request_id"] == "rid-123"
    assert "hunter2" not in line


def test_serve_access_log_records_pass_untouched():
    """Serve builds them from fields only; formatting and searching one per request would be waste."""
    access = logging.makeLogRecord({"name": "ray.serve", "msg": "%s %s 200 1.2ms", "args": ("GET", "/v1/x"),
                                    "serve_access_log": True})
    assert logs.RedactingFilter().filter(access)
    assert (access.msg, access.args) == ("%s %s 200 1.2ms", ("GET", "/v1/x"))
    other = logging.makeLogRecord({"name": "ray.serve", "msg": "%s %s", "args": ("password=", "hunter2")})
    assert logs.RedactingFilter().filter(other)
    assert other.args is None and "hunter2" not in other.msg


def test_email_addresses_are_masked():
    out = logs.redact("welcome mail sent to jane.doe+news@example.co.uk for user 42")
    assert "jane.doe" not in out and "example.co.uk" not in out and "user 42" in out


# The redactions as they were before they were made linear (their output is the reference; they take
# time quadratic in the length of a long run of characters, so they only ever see short texts here).
_FORMER_REDACTIONS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"nxk_[A-Za-z0-9]+_[A-Za-z0-9_-]+"), "[redacted-api-key]"),
    (re.compile(r"nx[svra]_[A-Za-z0-9_-]{20,}"), "[redacted-token]"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), "[redacted-key]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[redacted-email]"),
    (
        re.compile(r"""(?i)(["']?(?:password|passwd|secret|token|api[_-]?key|authorization|client_secret)["']?"""
                   r"""\s*[:=]\s*["']?)[^"',\s}&]+"""),
        r"\1[redacted]",
    ),
]

# Pieces that start, continue, close or break each redaction, so random sequences of them reach its edge cases.
_PIECES = [
    "eyJ", "eyJhbGci", "abcde", "x", "A", "1", ".", "..", "@", "-", "_", "%", "+", " ", "\n", "!", "=", ":", '"', "'",
    "nxk_", "nxs_", "nxa_", "0123456789abcdefghij", "-----BEGIN ", "-----END ", "RSA ", "PRIVATE KEY-----",
    "Bearer ", "bearer\t", "password", "Token", "api-key", "example", ".com", ".co.uk", ".c", "jane.doe+x",
    "-----BEGIN PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "eyJzdWIiOiJ1c2VyIn0.",
]


def _former_redact(text: str) -> str:
    for pattern, replacement in _FORMER_REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def test_redaction_masks_what_it_masked_before():
    rng = random.Random(6)
    for _ in range(20000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 24)))
        assert logs.redact(text) == _former_redact(text), text


_MB = 1 << 20


@pytest.mark.timeout(120)  # a guard, not a measurement: the former patterns took hours on these texts
@pytest.mark.parametrize(
    ("shape", "long"),
    [
        ("one word", "a" * _MB),  # every character could start an e-mail address's local part
        ("dotted words", "a." * (_MB // 2)),
        ("eyJ repeated", "eyJ" * (_MB // 3)),  # every "eyJ" could start a JWT
        ("unclosed PEM headers", "-----BEGIN PRIVATE KEY-----\n" * (_MB // 28)),
        ("at signs", "a@b." * (_MB // 4)),
        ("bearer and blanks", "Bearer" + " " * _MB),
        ("field and blanks", ("password" + " " * 100) * (_MB // 108)),
    ],
)
def test_redaction_of_a_megabyte_still_masks(shape, long):
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    secrets = f" mail jane@example.com jwt {jwt} password=hunter2 key nxk_abcd1234_SECRETSECRETSECRETSECRET "
    out = logs.redact(long + secrets + long)
    for secret in ("jane@", jwt, "hunter2", "SECRETSECRET"):
        assert secret not in out, shape
    for mask in ("[redacted-email]", "[redacted-jwt]", "password=[redacted]", "[redacted-api-key]"):
        assert mask in out, shape
    assert len(out) > 2 * len(long) - 200  # the long text itself is kept, not swallowed
