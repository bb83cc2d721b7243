"""session-mgr through the in-process platform with real shard actors on the session's Ray cluster:
create, touch, list (paged), revoke; idle and absolute timeouts; SIGKILL of a user's shard loses no
session; users share a bounded set of processes; erasing the account (user-auth) makes session-mgr
forget its sessions."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
import ray

from nexus_ray.actors import NAMESPACE
from nexus_ray.actors.session import UserSessions
from nexus_ray.deployments.platform.sessions import forget_user, sessions_client

pytestmark = pytest.mark.e2e

BASE = "/platform/v1/sessions/users"
SELF = ("platform:sessions:read", "platform:sessions:write")
ADMIN = ("platform:sessions:read", "platform:sessions:write", "platform:sessions:admin")


@pytest.fixture
async def user_id():
    """A fresh user id; its actor and persisted sessions are removed afterwards."""
    uid = f"user-{uuid.uuid4().hex[:12]}"
    yield uid
    await forget_user(user_id=uid)


async def open_session(client, headers, uid: str, **body) -> dict:
    r = await client.post(f"{BASE}/{uid}/sessions", json={"device": "phone", **body}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_create_touch_list_and_revoke(ray_client, bearer, user_id):
    me = bearer(*SELF, subject=user_id)
    phone = await open_session(ray_client, {**me, "User-Agent": "NexusApp/3.1"}, user_id, device="phone")
    assert (phone["ip"], phone["user_agent"], phone["user_id"]) == ("203.0.113.7", "NexusApp/3.1", user_id)
    laptop = await open_session(ray_client, me, user_id, device="laptop", ip="2001:db8::7", user_agent="Firefox")
    assert laptop["ip"] == "2001:db8::7"

    listed = (await ray_client.get(f"{BASE}/{user_id}/sessions", headers=me)).json()["items"]
    assert [s["device"] for s in listed] == ["laptop", "phone"]  # most recently used first

    touched = await ray_client.post(f"{BASE}/{user_id}/sessions/{phone['session_id']}/touch", headers=me)
    assert touched.status_code == 200 and touched.json()["last_used_at"] > phone["last_used_at"]
    listed = (await ray_client.get(f"{BASE}/{user_id}/sessions", headers=me)).json()["items"]
    assert [s["device"] for s in listed] == ["phone", "laptop"]
    got = await ray_client.get(f"{BASE}/{user_id}/sessions/{laptop['session_id']}", headers=me)
    assert got.status_code == 200 and got.json()["device"] == "laptop"

    # Another user may not look; an administrator may.
    other = bearer(*SELF, subject="someone-else")
    assert (await ray_client.get(f"{BASE}/{user_id}/sessions", headers=other)).status_code == 403
    assert (await ray_client.get(f"{BASE}/{user_id}/sessions", headers=bearer(*ADMIN, subject="ops"))).status_code \
        == 200

    r = await ray_client.delete(f"{BASE}/{user_id}/sessions/{laptop['session_id']}", headers=me)
    assert r.status_code == 204
    r = await ray_client.delete(f"{BASE}/{user_id}/sessions/{laptop['session_id']}", headers=me)
    assert r.status_code == 204  # revoking twice is fine
    gone = await ray_client.get(f"{BASE}/{user_id}/sessions/{laptop['session_id']}", headers=me)
    assert gone.status_code == 404 and gone.json()["reason"] == "unknown" and gone.json()["valid"] is False

    tablet = await open_session(ray_client, me, user_id, device="tablet")
    r = await ray_client.delete(f"{BASE}/{user_id}/sessions", params={"keep": tablet["session_id"]}, headers=me)
    assert r.status_code == 200 and r.json() == {"revoked": 1}
    listed = (await ray_client.get(f"{BASE}/{user_id}/sessions", headers=me)).json()["items"]
    assert [s["session_id"] for s in listed] == [tablet["session_id"]]


async def test_bad_input_names_the_field(ray_client, bearer, user_id):
    me = bearer(*SELF, subject=user_id)
    cases = [
        ({}, "device"),
        ({"device": "x", "ip": "not-an-address"}, "ip"),
        ({"device": "x", "idle_timeout_s": 0}, "idle_timeout_s"),
        ({"device": "x", "idle_timeout_s": 10**9}, "idle_timeout_s"),
        ({"device": "x", "absolute_timeout_s": 10**9}, "absolute_timeout_s"),
        ({"device": "x", "colour": "red"}, "colour"),
    ]
    for body, field in cases:
        r = await ray_client.post(f"{BASE}/{user_id}/sessions", json=body, headers=me)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in r.json()["errors"]] == [field], body
    r = await ray_client.get(f"{BASE}/{user_id}/sessions/not-a-session-id", headers=me)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["session_id"]
    r = await ray_client.get(f"{BASE}/bad user!/sessions", headers=bearer(*ADMIN, subject="ops"))
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["user_id"]


async def test_idle_and_absolute_timeouts(ray_client, bearer, user_id, until):
    me = bearer(*SELF, subject=user_id)
    keeper = await open_session(ray_client, me, user_id, device="keeper")
    idle = await open_session(ray_client, me, user_id, device="idle", idle_timeout_s=1)

    async def idle_expired():
        r = await ray_client.get(f"{BASE}/{user_id}/sessions/{idle['session_id']}", headers=me)
        return r.json() if r.status_code == 404 else None

    assert (await until(idle_expired))["reason"] == "idle_timeout"
    # Reported once, then pruned: it is gone from the list and unknown from now on.
    listed = (await ray_client.get(f"{BASE}/{user_id}/sessions", headers=me)).json()["items"]
    assert [s["device"] for s in listed] == ["keeper"]
    r = await ray_client.get(f"{BASE}/{user_id}/sessions/{idle['session_id']}", headers=me)
    assert r.json()["reason"] == "unknown"

    # Used all the time, a session still ends at its absolute timeout.
    busy = await open_session(ray_client, me, user_id, device="busy", absolute_timeout_s=2)

    async def absolute_expired():
        r = await ray_client.post(f"{BASE}/{user_id}/sessions/{busy['session_id']}/touch", headers=me)
        return r.json() if r.status_code == 404 else None

    assert (await until(absolute_expired))["reason"] == "absolute_timeout"
    r = await ray_client.get(f"{BASE}/{user_id}/sessions/{keeper['session_id']}", headers=me)
    assert r.status_code == 200


async def test_killing_the_actor_loses_no_session(ray_client, bearer, user_id):
    me = bearer(*SELF, subject=user_id)
    # Concurrent creates: each 201 is an acknowledged write.
    created = await asyncio.gather(*(open_session(ray_client, me, user_id, device=f"device-{i}") for i in range(15)))
    for s in created[:5]:
        r = await ray_client.post(f"{BASE}/{user_id}/sessions/{s['session_id']}/touch", headers=me)
        assert r.status_code == 200
    before = (await ray_client.get(f"{BASE}/{user_id}/sessions", headers=me)).json()["items"]
    assert len(before) == 15

    shards = sessions_client()
    first_pid = await shards.call_shard(user_id, "pid")
    os.kill(first_pid, signal.SIGKILL)

    after = await ray_client.get(f"{BASE}/{user_id}/sessions", headers=me)  # waits for the restart
    assert after.status_code == 200, after.text
    assert after.json()["items"] == before
    second_pid = await shards.call_shard(user_id, "pid")
    assert second_pid != first_pid

    # Writes after the restart are as durable as before it.
    extra = await open_session(ray_client, me, user_id, device="after-restart")
    revoked = created[0]["session_id"]
    assert (await ray_client.delete(f"{BASE}/{user_id}/sessions/{revoked}", headers=me)).status_code == 204
    os.kill(second_pid, signal.SIGKILL)
    final = (await ray_client.get(f"{BASE}/{user_id}/sessions", headers=me)).json()["items"]
    assert {s["session_id"] for s in final} == ({s["session_id"] for s in before} - {revoked}) | {extra["session_id"]}
    assert await shards.call_shard(user_id, "pid") not in (first_pid, second_pid)


async def test_erasing_the_account_forgets_its_sessions(ray_client, until):
    username = f"e{uuid.uuid4().hex[:10]}"
    password = f"erase me later {uuid.uuid4().hex[:6]}"
    r = await ray_client.post("/auth/v1/users", json={"username": username, "email": f"{username}@example.org",
                                                      "password": password})
    assert r.status_code == 201, r.text
    uid = r.json()["user_id"]
    r = await ray_client.post("/auth/v1/auth/login", json={"username": username, "password": password})
    legacy = {"Authorization": f"Bearer {r.json()['session_token']}"}

    # The user's own legacy session token works at the platform namespace's edge too.
    await open_session(ray_client, legacy, uid, device="phone")
    await open_session(ray_client, legacy, uid, device="tv")
    assert len((await ray_client.get(f"{BASE}/{uid}/sessions", headers=legacy)).json()["items"]) == 2

    assert (await ray_client.delete(f"/auth/v1/users/{uid}", headers=legacy)).status_code == 200
    persisted = UserSessions(uid)

    async def forgotten():
        from nexus_ray.stores.cache import redis_client

        return not await redis_client().exists(persisted.journal_key, persisted.snapshot_key)

    await until(forgotten, within_s=120, every=0.5)  # outbox -> Kafka -> session-mgr's consumer


async def test_pages_of_sessions(ray_client, bearer, user_id):
    me = bearer(*SELF, subject=user_id)
    for i in range(5):
        await open_session(ray_client, me, user_id, device=f"d{i}")
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await ray_client.get(f"{BASE}/{user_id}/sessions", params=params, headers=me)).json()
        assert len(page["items"]) <= 2
        seen += [s["device"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"d{i}" for i in reversed(range(5))]  # most recently used first, none twice
    r = await ray_client.get(f"{BASE}/{user_id}/sessions", params={"cursor": "not-a-cursor"}, headers=me)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["cursor"]
    r = await ray_client.get(f"{BASE}/{user_id}/sessions", params={"limit": 101}, headers=me)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["limit"]


async def test_many_users_share_a_bounded_set_of_processes(ray_client, bearer):
    users = [f"user-{uuid.uuid4().hex[:12]}" for _ in range(24)]
    try:
        await asyncio.gather(*(open_session(ray_client, bearer(*SELF, subject=u), u) for u in users))
        shards = sessions_client()
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == NAMESPACE and a["name"].startswith(f"{UserSessions.kind}:")}
        assert names == {shards.actor_name(u) for u in users}
        assert len(names) <= shards.shards < len(users)
        pids = {await shards.call_shard(u, "pid") for u in users}
        assert len(pids) == len(names)
    finally:
        await asyncio.gather(*(forget_user(user_id=u) for u in users))
