"""Errors survive pickling and render as problem+json; logs never carry secrets."""

import json
import logging
import pickle

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


def test_email_addresses_are_masked():
    out = logs.redact("welcome mail sent to jane.doe+news@example.co.uk for user 42")
    assert "jane.doe" not in out and "example.co.uk" not in out and "user 42" in out
