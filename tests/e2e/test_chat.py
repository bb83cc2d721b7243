"""chat-service with its room entities in shard actors on the session's Ray cluster, over a real WebSocket.

The in-process platform is served by uvicorn (a real server, a real client): send, ack and
deliver in order per sender with per-room sequence numbers; dedup of a resent client id;
history pages; the moderation filter, mutes, reports, edits and soft deletes with their
permissions; read receipts; and a dropped connection plus a SIGKILLed room shard that lose
no acknowledged message (the client resumes from its last sequence number).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from nexus_ray.deployments.platform.chat import rooms_client

pytestmark = pytest.mark.e2e

BASE = "/platform/v1/chat/rooms"
SCOPES = ("platform:chat:read", "platform:chat:write")


@pytest.fixture(scope="module")
async def ws_base(ray_client, apps, until):
    """The in-process platform namespace (connected to Ray) served by uvicorn on a free port; its ws:// base URL."""
    import uvicorn

    platform_app = apps["platform"]

    async def platform(scope, receive, send):  # mounted at /platform, as Serve mounts it
        await platform_app({**scope, "root_path": "/platform"}, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(platform, lifespan="off", log_config=None))
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    await until(lambda: srv.started or task.done())
    assert srv.started, "the server did not start"
    yield f"ws://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    await task
    sock.close()


@pytest.fixture
def room(ray_client, bearer):
    """``await room(moderator, *members, **policy)``: a fresh room id with those members."""

    async def make(moderator: str, *members: str, **policy) -> str:
        room_id = uuid.uuid4().hex
        me = bearer(*SCOPES, subject=moderator)
        r = await ray_client.post(BASE, json={"room_id": room_id, "name": "Lobby", "policy": policy}, headers=me)
        assert r.status_code == 201, r.text
        for member in members:
            r = await ray_client.put(f"{BASE}/{room_id}/members/{member}", json={}, headers=me)
            assert r.status_code == 200, r.text
        return room_id

    yield make


class Member:
    """One live connection: what it received, by type, in order (the events of a ``batch`` frame one by one)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []
        self.frames: list[str] = []  # each frame's type
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames.append(frame["type"])
                self.events += frame["events"] if frame["type"] == "batch" else [frame]
        except ConnectionClosed:
            pass

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def seqs(self, sender: str | None = None) -> list[int]:
        return [e["message"]["seq"] for e in self.of("message") if sender in (None, e["message"]["sender"])]

    async def send(self, client_id: str, text: str) -> None:
        await self.ws.send(json.dumps({"type": "send", "client_id": client_id, "text": text}))


@pytest.fixture
async def join(ws_base, bearer):
    opened: list[Member] = []

    async def open_(room_id: str, user: str, after: int | None = None, batch: bool = False) -> Member:
        token = bearer(*SCOPES, subject=user)["Authorization"].split()[1]
        query = "&".join(([] if after is None else [f"after={after}"]) + (["batch=true"] if batch else []))
        ws = await connect(f"{ws_base}{BASE}/{room_id}/live{'?' + query if query else ''}",
                           subprotocols=["nexus.bearer", token])
        member = Member(ws)
        opened.append(member)
        return member

    yield open_
    for member in opened:
        member._reader.cancel()
        await member.ws.close()


async def test_send_ack_deliver_once_in_order_and_history(ray_client, bearer, room, join, until, ws_base):
    room_id = await room("alice", "bob")
    alice, bob = await join(room_id, "alice"), await join(room_id, "bob")
    await until(lambda: alice.of("ready") and bob.of("ready"))
    for i in range(5):
        await alice.send(f"a{i}", f"hello {i}")
    for i in range(2):
        await bob.send(f"b{i}", f"hi {i}")
    await until(lambda: len(alice.of("ack")) == 5 and len(bob.of("ack")) == 2)
    await until(lambda: len(alice.seqs()) == 7 and len(bob.seqs()) == 7)
    acked = [a["seq"] for a in alice.of("ack")]
    assert acked == sorted(acked) and len(set(acked + [a["seq"] for a in bob.of("ack")])) == 7
    for member in (alice, bob):  # every message once, each sender's in the order sent
        assert member.seqs("alice") == acked
        assert [e["message"]["text"] for e in member.of("message") if e["message"]["sender"] == "alice"] == \
            [f"hello {i}" for i in range(5)]
        assert sorted(member.seqs()) == member.seqs() and len(set(member.seqs())) == 7

    # A resend of a client id already stored is acknowledged with the stored message, not stored again.
    await alice.send("a0", "hello 0")
    await until(lambda: len(alice.of("ack")) == 6)
    assert alice.of("ack")[-1] == {"type": "ack", "client_id": "a0", "seq": acked[0], "duplicate": True}

    me = bearer(*SCOPES, subject="bob")
    seen, cursor = [], None
    while True:
        r = await ray_client.get(f"{BASE}/{room_id}/messages", params={"limit": 3, **({"cursor": cursor} if cursor
                                                                                       else {})}, headers=me)
        assert r.status_code == 200, r.text
        seen += [m["seq"] for m in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(bob.seqs(), reverse=True)

    # Not a member: the room does not exist for them, over HTTP and over the socket.
    carol = bearer(*SCOPES, subject="carol")
    assert (await ray_client.get(f"{BASE}/{room_id}", headers=carol)).status_code == 404
    assert (await ray_client.get(f"{BASE}/{room_id}/messages", headers=carol)).status_code == 404
    outsider = await join(room_id, "carol")
    await until(lambda: outsider.ws.close_code is not None)
    assert outsider.ws.close_code == 4404


async def test_a_batch_member_gets_the_same_messages_in_order_and_a_plain_one_never_a_batch(room, join, until):
    room_id = await room("alice", "bob", "carol")
    alice = await join(room_id, "alice", batch=True)
    bob, carol = await join(room_id, "bob"), await join(room_id, "carol")
    await until(lambda: alice.of("ready") and bob.of("ready") and carol.of("ready"))
    await asyncio.gather(*(carol.send(f"c{i}", f"burst {i}") for i in range(40)))
    await until(lambda: len(alice.seqs()) == 40 and len(bob.seqs()) == 40)
    assert alice.seqs() == bob.seqs() == sorted(bob.seqs()) and len(set(bob.seqs())) == 40
    assert [e["message"]["text"] for e in alice.of("message")] == [e["message"]["text"] for e in bob.of("message")]
    assert "batch" not in bob.frames  # batches only for a member that asked for them
    assert len(bob.frames) >= 41  # ready, then one frame per message (and presence events)


async def test_moderation_edits_deletes_reports_mutes_and_receipts(ray_client, bearer, room, join, until):
    room_id = await room("mod", "bob", blocked_words=["spam"], block_links=True)
    mod_h, bob_h = bearer(*SCOPES, subject="mod"), bearer(*SCOPES, subject="bob")
    mod, bob = await join(room_id, "mod"), await join(room_id, "bob")
    await until(lambda: mod.of("ready") and bob.of("ready"))

    await bob.send("x1", "cheap SPAM here")
    await bob.send("x2", "see https://example.com now")
    await bob.send("x3", "a fair question")
    await until(lambda: len(bob.of("rejected")) == 2 and bob.of("ack"))
    assert [(r["client_id"], r["status"]) for r in bob.of("rejected")] == [("x1", 422), ("x2", 422)]
    assert "spam" in bob.of("rejected")[0]["detail"]
    seq = bob.of("ack")[0]["seq"]

    # Edits: the author only. Deletes: the author or a moderator; soft, marked, text gone.
    r = await ray_client.patch(f"{BASE}/{room_id}/messages/{seq}", json={"text": "a better question"}, headers=mod_h)
    assert r.status_code == 403
    r = await ray_client.patch(f"{BASE}/{room_id}/messages/{seq}", json={"text": "a better question"}, headers=bob_h)
    assert r.status_code == 200 and r.json()["edited"] is True and r.json()["text"] == "a better question"
    await until(lambda: mod.of("edited"))
    r = await ray_client.post(f"{BASE}/{room_id}/messages/{seq}/reports", json={"reason": "rude"}, headers=mod_h)
    assert r.status_code == 201
    assert (await ray_client.get(f"{BASE}/{room_id}/reports", headers=bob_h)).status_code == 403
    reports = (await ray_client.get(f"{BASE}/{room_id}/reports", headers=mod_h)).json()["items"]
    assert [(x["seq"], x["reported_by"], x["reason"]) for x in reports] == [(seq, "mod", "rude")]
    r = await ray_client.delete(f"{BASE}/{room_id}/messages/{seq}", headers=mod_h)
    assert r.status_code == 200 and r.json()["deleted"] is True and r.json()["text"] is None
    await until(lambda: bob.of("deleted"))
    assert (await ray_client.delete(f"{BASE}/{room_id}/messages/{seq}", headers=bob_h)).status_code == 409
    history = (await ray_client.get(f"{BASE}/{room_id}/messages", headers=bob_h)).json()["items"]
    assert [(m["seq"], m["deleted"], m["text"], m["edited"]) for m in history] == [(seq, True, None, True)]

    # A muted member cannot post until unmuted; only a moderator mutes.
    assert (await ray_client.put(f"{BASE}/{room_id}/mutes/mod", json={"minutes": 5}, headers=bob_h)).status_code \
        == 403
    assert (await ray_client.put(f"{BASE}/{room_id}/mutes/bob", json={"minutes": 5}, headers=mod_h)).status_code \
        == 200
    await bob.send("x4", "let me speak")
    await until(lambda: len(bob.of("rejected")) == 3)
    assert bob.of("rejected")[-1]["status"] == 403
    assert (await ray_client.delete(f"{BASE}/{room_id}/mutes/bob", headers=mod_h)).status_code == 200
    await bob.send("x5", "thanks")
    await until(lambda: len(bob.of("ack")) == 2)

    # Read receipts reach the other members and stay with the room.
    last = bob.of("ack")[-1]["seq"]
    await mod.ws.send(json.dumps({"type": "read", "seq": last}))
    await until(lambda: bob.of("receipt"))
    assert bob.of("receipt")[-1] == {"type": "receipt", "user_id": "mod", "seq": last}
    info = (await ray_client.get(f"{BASE}/{room_id}", headers=bob_h)).json()
    assert info["reads"]["mod"] == last and info["members"] == {"mod": "moderator", "bob": "member"}

    # Bad input names the field.
    r = await ray_client.put(f"{BASE}/{room_id}/policy", json={"block_links": "maybe"}, headers=mod_h)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["block_links"]


async def test_dropped_connection_and_killed_room_lose_no_acknowledged_message(ray_client, room, join, until):
    room_id = await room("alice", "bob")
    alice, bob = await join(room_id, "alice"), await join(room_id, "bob")
    await until(lambda: alice.of("ready") and bob.of("ready"))
    await alice.send("m0", "before")
    await until(lambda: bob.seqs())
    seen_by_bob = bob.seqs()[-1]
    bob._reader.cancel()
    bob.ws.transport.abort()  # dropped, no close frame

    for i in range(1, 4):
        await alice.send(f"m{i}", f"while bob is away {i}")
    await until(lambda: len(alice.of("ack")) == 4)
    first_pid = await rooms_client().call_shard(room_id, "pid")
    os.kill(first_pid, signal.SIGKILL)  # the room's shard dies with every ack already given
    await alice.send("m4", "after the crash")
    await until(lambda: len(alice.of("ack")) == 5, within_s=60)
    assert await rooms_client().call_shard(room_id, "pid") != first_pid
    acked = [a["seq"] for a in alice.of("ack")]
    assert acked == sorted(acked) and len(set(acked)) == 5  # no sequence number handed out twice

    back = await join(room_id, "bob", after=seen_by_bob)
    await until(lambda: back.of("ready"))
    assert back.seqs() == acked[1:]  # replayed from history: each missed message once, in order
    assert back.of("ready")[0]["seq"] == acked[-1]
    await alice.send("m5", "welcome back")
    await until(lambda: len(back.seqs()) == 5)
    assert back.seqs()[-1] == alice.of("ack")[-1]["seq"]
