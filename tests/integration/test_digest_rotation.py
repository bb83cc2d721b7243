"""A master-key rotation keeps the credentials stored as keyed digests working during the overlap, and only then."""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr

from nexus_ray.config import get_settings
from nexus_ray.edge import apikeys

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("captured_logs")]

URL = "/platform/v1/gateway/notice"
OLD = "the master key before the rotation, long enough 0123"


@pytest.fixture
def master(monkeypatch):
    s = get_settings()

    def use(current: str, *previous: str) -> None:
        monkeypatch.setattr(s, "master_key", SecretStr(current))
        monkeypatch.setattr(s, "previous_master_keys", [SecretStr(p) for p in previous])
        apikeys.forget_all()  # what the replica verified under the other keys

    return use


async def test_keys_and_sessions_made_under_the_previous_key_work_during_the_overlap(client, master):
    new = get_settings().master_key.get_secret_value()
    master(OLD)
    _, key = await apikeys.create(principal="svc-rotation", name="t", scopes=["platform:gateway:read"])
    username, password = f"r{uuid.uuid4().hex[:10]}", f"rotate me {uuid.uuid4().hex[:8]}"
    r = await client.post("/auth/v1/users", json={"username": username, "email": f"{username}@example.org",
                                                  "password": password})
    assert r.status_code == 201, r.text
    r = await client.post("/auth/v1/auth/login", json={"username": username, "password": password})
    session = {"Authorization": f"Bearer {r.json()['session_token']}"}
    old_session_id = r.json()["session_id"]

    master(new, OLD)  # rotated: new digests under the new key, the old ones still verify
    assert (await client.get(URL, headers={"X-API-Key": key})).status_code == 200
    assert (await client.get("/auth/v1/users/me", headers=session)).status_code == 200
    listed = await client.get("/auth/v1/auth/sessions", headers=session)
    assert [s["session_id"] for s in listed.json()] == [old_session_id]
    r = await client.post("/auth/v1/auth/login", json={"username": username, "password": password})
    assert r.json()["session_id"] != old_session_id  # a new session is stored under the new key

    master(new)  # the overlap ends: what only the old key verifies stops working
    assert (await client.get(URL, headers={"X-API-Key": key})).status_code == 401
    assert (await client.get("/auth/v1/users/me", headers=session)).status_code == 401
    new_session = {"Authorization": f"Bearer {r.json()['session_token']}"}
    assert (await client.get("/auth/v1/users/me", headers=new_session)).status_code == 200
