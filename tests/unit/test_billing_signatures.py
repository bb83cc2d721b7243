"""The webhook signature receivers check (good, tampered, stale, malformed) and the retry backoff schedule."""

from __future__ import annotations

import time

import pytest

from nexus_ray.deployments.commerce.billing.webhooks import InvalidSignature, backoff_s, sign, verify_signature

SECRET = "whsec_test_secret"
BODY = b'{"id":"evt_1","type":"payment_intent.succeeded"}'


def test_a_good_signature_verifies_and_gives_its_timestamp():
    now = int(time.time())
    assert verify_signature(BODY, sign(BODY, SECRET, now), SECRET, 300) == now
    assert verify_signature(BODY.decode(), sign(BODY, SECRET, now), SECRET, 300) == now


def test_the_header_is_hmac_sha256_of_timestamp_dot_body():
    import hashlib
    import hmac

    header = sign(BODY, SECRET, 1700000000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


@pytest.mark.parametrize("tamper", [
    lambda b, h, s: (b + b" ", h, s),                                      # body changed
    lambda b, h, s: (b, h, s + "x"),                                       # another secret
    lambda b, h, s: (b, h.replace("t=", "t=1"), s),                        # timestamp changed
    lambda b, h, s: (b, h[:-1] + ("0" if h[-1] != "0" else "1"), s),       # signature changed
])
def test_a_tampered_delivery_is_refused(tamper):
    now = int(time.time())
    body, header, secret = tamper(BODY, sign(BODY, SECRET, now), SECRET)
    with pytest.raises(InvalidSignature):
        verify_signature(body, header, secret, 300)


def test_a_stale_timestamp_is_refused_even_when_correctly_signed():
    old = int(time.time()) - 301
    header = sign(BODY, SECRET, old)
    with pytest.raises(InvalidSignature, match="tolerance"):
        verify_signature(BODY, header, SECRET, 300)
    assert verify_signature(BODY, header, SECRET, 600) == old


@pytest.mark.parametrize("header", [None, "", "v1=abc", "t=123", "t=abc,v1=def", "garbage"])
def test_a_malformed_header_is_refused(header):
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, header, SECRET, 300)


def test_any_of_several_signatures_may_match_while_a_secret_rotates():
    now = int(time.time())
    new = sign(BODY, "whsec_new", now)
    old = sign(BODY, SECRET, now).split(",")[1]
    assert verify_signature(BODY, f"{new},{old}", SECRET, 300) == now


def test_backoff_doubles_per_failure_up_to_its_cap(monkeypatch):
    from nexus_ray.deployments.commerce.billing.settings import BillingSettings
    from nexus_ray.deployments.kit.settings import settings_of

    monkeypatch.setattr(settings_of(BillingSettings), "billing_webhook_backoff_s", 30.0)
    monkeypatch.setattr(settings_of(BillingSettings), "billing_webhook_backoff_max_s", 200.0)
    assert [backoff_s(n) for n in range(1, 6)] == [30.0, 60.0, 120.0, 200.0, 200.0]
