"""Pure parts of the identity services, without stores or Ray: the UserSessions state machine, input
validation (emails, scopes), the password policy and argon2id hashing."""

from __future__ import annotations

import pytest

from nexus_ray.actors.session import ABSOLUTE, IDLE, UserSessions, expiry_reason, with_expiries
from nexus_ray.deployments.auth.auth import passwords
from nexus_ray.deployments.auth.users.models import check_scope, normalize_email
from nexus_ray.exceptions import ValidationFailed


def _session(sid: str, at: float, *, idle: int = 60, absolute: int = 3600) -> dict:
    return {"session_id": sid, "user_id": "u1", "device": "d", "ip": "192.0.2.1", "user_agent": "ua",
            "created_at": at, "last_used_at": at, "idle_timeout_s": idle, "absolute_timeout_s": absolute}


def test_create_is_idempotent_and_evicts_the_least_recently_used():
    actor = UserSessions("u1")
    state = actor.initial_state()
    state = actor.apply(state, "create", {"session": _session("a", 100.0), "max_sessions": 2})
    retried = actor.apply(state, "create", {"session": {**_session("a", 999.0), "device": "other"}, "max_sessions": 2})
    assert retried == state  # a retried create keeps the first
    state = actor.apply(state, "create", {"session": _session("b", 101.0), "max_sessions": 2})
    state = actor.apply(state, "touch", {"session_id": "a", "at": 150.0})
    state = actor.apply(state, "create", {"session": _session("c", 160.0), "max_sessions": 2})
    assert sorted(state["sessions"]) == ["a", "c"]  # b was the least recently used


def test_touch_never_goes_back_and_ops_do_not_mutate_their_input():
    actor = UserSessions("u1")
    state = actor.apply(actor.initial_state(), "create", {"session": _session("a", 100.0), "max_sessions": 5})
    frozen = repr(state)
    later = actor.apply(state, "touch", {"session_id": "a", "at": 200.0})
    assert actor.apply(later, "touch", {"session_id": "a", "at": 150.0})["sessions"]["a"]["last_used_at"] == 200.0
    assert actor.apply(later, "touch", {"session_id": "gone", "at": 300.0}) == later
    assert repr(state) == frozen
    removed = actor.apply(later, "remove", {"session_ids": ["a", "never-existed"], "reason": "revoked"})
    assert removed == {"sessions": {}}
    with pytest.raises(ValueError, match="unknown op"):
        actor.apply(state, "explode", {})


def test_expiry_reasons():
    s = _session("a", 1000.0, idle=10, absolute=100)
    assert expiry_reason(s, 1009.9) is None
    assert expiry_reason(s, 1010.0) == IDLE
    used = {**s, "last_used_at": 1095.0}
    assert expiry_reason(used, 1099.0) is None
    assert expiry_reason(used, 1100.0) == ABSOLUTE
    assert with_expiries(used)["idle_expires_at"] == 1100.0  # capped by the absolute expiry
    assert with_expiries(s)["idle_expires_at"] == 1010.0 and with_expiries(s)["expires_at"] == 1100.0


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("Ada@Example.ORG", "Ada@example.org"), (" bob.smith+tag@sub.example.co.uk ", "bob.smith+tag@sub.example.co.uk"),
     ("zoe@bücher.example", "zoe@xn--bcher-kva.example")],
)
def test_emails_are_normalised(raw, normal):
    assert normalize_email(raw) == normal


@pytest.mark.parametrize(
    "bad", ["plain", "@example.org", "a@", "a@localhost", "a@-bad-.org", "a..b@example.org", "a@example.123",
            "x" * 65 + "@example.org", "a b@example.org"],
)
def test_bad_emails_are_refused(bad):
    with pytest.raises(ValueError):
        normalize_email(bad)


@pytest.mark.parametrize("scope", ["*", "commerce:*", "commerce:orders:*", "commerce:orders:read", "auth:users:admin"])
def test_scopes_the_edge_can_check(scope):
    assert check_scope(scope) == scope


@pytest.mark.parametrize("scope", ["", "commerce", "Commerce:orders:read", "a:b:c:d", "commerce:*:read", "a::b", "*:x"])
def test_malformed_scopes(scope):
    with pytest.raises(ValueError):
        check_scope(scope)


@pytest.mark.parametrize(
    ("password", "kind"),
    [("short", "too_short"), ("x" * 300, "too_long"), ("Password123", "too_common"), ("aaaaaaaaaaaa", "too_common"),
     ("my name is adalovelace!", "contains_username")],
)
def test_password_policy(password, kind):
    with pytest.raises(ValidationFailed) as err:
        passwords.check_policy(password, field="new_password", username="AdaLovelace")
    assert err.value.extra["errors"] == [{"field": "new_password", "message": err.value.extra["errors"][0]["message"],
                                          "type": kind}]


def test_a_good_password_passes():
    passwords.check_policy("correct horse battery staple", username="ada")


async def test_argon2id_hashes_verify_and_refuse():
    stored = await passwords.hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$") and "correct" not in stored
    assert await passwords.verify_password(stored, "correct horse battery staple")
    assert not await passwords.verify_password(stored, "wrong horse battery staple")
    assert not await passwords.verify_password(None, "anything at all")  # the decoy: no account, same cost
    assert not await passwords.verify_password("not a hash", "anything at all")
    assert not passwords.needs_rehash(stored)
