"""notification-service on the real stores: events to email through real SMTP (the embedded server's maildir),
templates with locale fallback and escaping, retries with backoff, dead letters, quiet hours, idempotent sends,
sandbox SMS and VAPID-signed push."""

from __future__ import annotations

import base64
import email
import email.policy
import mailbox
import socket
import uuid
from datetime import UTC, datetime, timedelta
from email.message import Message

import jwt
import pytest
import statements
from cryptography.hazmat.primitives.asymmetric import ec

from nexus_ray.deployments.platform.notifications import service

pytestmark = pytest.mark.integration

API = "/platform/v1/notifications"
ALL = "platform:notifications:*"


@pytest.fixture(scope="module")
def admin(bearer):
    return bearer(ALL, subject="notif-ops")


def mail_to(stores, address: str) -> list[Message]:
    box = mailbox.Maildir(str(stores.data_dir / "smtp" / "maildir"), create=False)
    found = []
    for key in box.keys():
        msg = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
        if address in (msg["X-Envelope-To"] or ""):
            found.append(msg)
    return found


def parts(msg: Message) -> dict[str, str]:
    return {p.get_content_type(): p.get_payload(decode=True).decode() for p in msg.walk()
            if p.get_content_type() in ("text/plain", "text/html")}


async def set_prefs(client, admin, user_id: str, **prefs) -> None:
    r = await client.put(f"{API}/users/{user_id}/preferences", json=prefs, headers=admin)
    assert r.status_code == 200, r.text


async def emit(topic: str, data: dict) -> uuid.UUID:
    from nexus_ray.stores import events, postgres

    async with postgres.transaction() as conn:
        return await events.emit(conn, topic, data, key=data.get("order_id"))


async def message_of(client, admin, message_id: str, status: str, until) -> dict:
    async def reached():
        r = await client.get(f"{API}/messages/{message_id}", headers=admin)
        return r.json() if r.json()["status"] == status else None

    return await until(reached, within_s=20)


async def test_order_events_send_the_templated_email_through_smtp(client, admin, stores, until):
    en, fr = f"u-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    en_mail, fr_mail = f"{en}@shop.test", f"{fr}@shop.test"
    await set_prefs(client, admin, en, email=en_mail, locale="en-GB")
    await set_prefs(client, admin, fr, email=fr_mail, locale="fr-CA")  # no fr-CA template: falls back to fr
    order = f"ord-{uuid.uuid4().hex[:6]}"
    await emit("order.created", {"order_id": order, "customer": en, "total": 4200, "currency": "EUR",
                                 "status": "created"})
    await emit("order.created", {"order_id": order + "<b>", "customer": fr, "total": 990, "currency": "EUR",
                                 "status": "created"})
    [got] = await until(lambda: mail_to(stores, en_mail) or None, within_s=30)
    assert got["Subject"] == f"Order {order} received"
    body = parts(got)
    assert f"order {order} of 4200 EUR" in body["text/plain"] and f"<b>{order}</b>" in body["text/html"]
    [french] = await until(lambda: mail_to(stores, fr_mail) or None, within_s=30)
    assert french["Subject"] == f"Commande {order}<b> reçue"
    # The value is escaped in HTML; the template's own markup is not.
    assert f"<b>{order}&lt;b&gt;</b>" in parts(french)["text/html"]
    r = await client.get(f"{API}/users/{en}/messages", headers=admin)
    [m] = r.json()["items"]
    assert m["status"] == "sent" and m["template"] == "order.created" and m["locale"] == "en"
    assert got["Message-ID"] == f"<{m['id']}@nexus-notifications>"


async def test_a_provider_failing_three_times_then_succeeding_delivers_once(client, admin, stores, until):
    address = f"tempfail-3-{uuid.uuid4().hex[:8]}@tempfail.test"  # the SMTP server answers 451 three times
    r = await client.post(f"{API}/messages", headers=admin, json={
        "channel": "email", "to": address, "data": {"subject": "Hi", "text": "retry me"}})
    assert r.status_code == 201, r.text
    sent = await message_of(client, admin, r.json()["id"], "sent", until)
    assert sent["attempts"] == 4 and sent["last_error"] is None
    assert len(mail_to(stores, address)) == 1


async def test_permanent_failure_and_exhausted_retries_are_dead_letters(client, admin, stores, until):
    rejected = f"nobody-{uuid.uuid4().hex[:8]}@reject.test"  # 550 at RCPT
    r = await client.post(f"{API}/messages", headers=admin, json={"channel": "email", "to": rejected,
                                                                  "data": {"text": "x"}})
    dead = await message_of(client, admin, r.json()["id"], "dead", until)
    assert dead["attempts"] == 1 and "550" in dead["last_error"]
    always = f"tempfail-99-{uuid.uuid4().hex[:8]}@tempfail.test"
    r = await client.post(f"{API}/messages", headers=admin, json={"channel": "email", "to": always,
                                                                  "data": {"text": "x"}})
    exhausted = await message_of(client, admin, r.json()["id"], "dead", until)
    assert exhausted["attempts"] == exhausted["max_attempts"] == 5 and "451" in exhausted["last_error"]
    r = await client.get(f"{API}/dead-letters", params={"limit": 500}, headers=admin)
    assert {dead["id"], exhausted["id"]} <= {m["id"] for m in r.json()["items"]}
    assert not mail_to(stores, rejected) and not mail_to(stores, always)
    # Sent again on request: a fresh round of attempts (which fails again here).
    r = await client.post(f"{API}/messages/{dead['id']}/retry", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["attempts"] == 0
    assert (await client.post(f"{API}/messages/{dead['id']}/retry", headers=admin)).status_code in (200, 409)


async def test_a_slow_relay_exchange_holds_up_only_its_own_message(client, admin, stores, until):
    slow = f"slow-6000-{uuid.uuid4().hex[:8]}@slow.test"  # the SMTP server takes 6 s to answer its RCPT
    r = await client.post(f"{API}/messages", headers=admin, json={"channel": "email", "to": slow,
                                                                  "data": {"text": "take your time"}})
    slow_id = r.json()["id"]
    await message_of(client, admin, slow_id, "sending", until)  # taken, and its exchange under way
    fast = []
    for _ in range(3):  # queued after the slow one was taken: a later round of the delivery loop
        r = await client.post(f"{API}/messages", headers=admin, json={
            "channel": "email", "to": f"quick-{uuid.uuid4().hex[:8]}@shop.test", "data": {"text": "now"}})
        fast.append(r.json()["id"])
    for message_id in fast:
        await message_of(client, admin, message_id, "sent", until)
    assert (await client.get(f"{API}/messages/{slow_id}", headers=admin)).json()["status"] == "sending"
    assert (await message_of(client, admin, slow_id, "sent", until))["attempts"] == 1
    assert len(mail_to(stores, slow)) == 1


async def test_direct_sends_are_idempotent_by_client_id_and_guarded(client, admin, bearer, stores, until):
    user = f"u-{uuid.uuid4().hex[:8]}"
    await set_prefs(client, admin, user, email=f"{user}@shop.test")
    writer = bearer("platform:notifications:read", "platform:notifications:write", subject="some-service")
    body = {"client_message_id": f"welcome-{user}", "channel": "email", "user_id": user,
            "data": {"subject": "Welcome", "text": "hello <there>"}}
    first = await client.post(f"{API}/messages", json=body, headers=writer)
    again = await client.post(f"{API}/messages", json=body, headers=writer)
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true" and again.json()["id"] == first.json()["id"]
    clash = await client.post(f"{API}/messages", json={**body, "channel": "sms"}, headers=writer)
    assert clash.status_code == 409
    await message_of(client, admin, first.json()["id"], "sent", until)
    [mail] = mail_to(stores, f"{user}@shop.test")
    assert "<p>hello &lt;there&gt;</p>" in parts(mail)["text/html"]
    # A raw address needs admin; another user's message is a 404; the user sees their own.
    r = await client.post(f"{API}/messages", json={"channel": "email", "to": "a@b.test", "data": {}}, headers=writer)
    assert r.status_code == 403
    stranger = bearer("platform:notifications:read", subject="stranger")
    assert (await client.get(f"{API}/messages/{first.json()['id']}", headers=stranger)).status_code == 404
    owner = bearer("platform:notifications:read", subject=user)
    assert (await client.get(f"{API}/messages/{first.json()['id']}", headers=owner)).status_code == 200
    assert (await client.get(f"{API}/users/{user}/preferences", headers=stranger)).status_code == 403
    r = await client.post(f"{API}/messages", json={"channel": "fax", "user_id": user}, headers=writer)
    assert r.status_code == 422 and "channel" in r.text


async def test_quiet_hours_hold_non_urgent_messages_and_security_notices_go_at_once(client, admin, until):
    user = f"u-{uuid.uuid4().hex[:8]}"
    zone = "Pacific/Auckland"
    from zoneinfo import ZoneInfo

    local = datetime.now(UTC).astimezone(ZoneInfo(zone))
    start, end = (local - timedelta(hours=1)).time(), (local + timedelta(hours=2)).time()
    await set_prefs(client, admin, user, email=f"{user}@shop.test", phone="+64211234567", timezone=zone,
                    quiet_start=start.strftime("%H:%M"), quiet_end=end.strftime("%H:%M"),
                    channels={"orders": ["email"], "security": ["sms"]})
    await emit("order.paid", {"order_id": "o-q", "customer": user, "total": 1, "currency": "NZD", "status": "paid"})
    await emit("auth.user.password_changed", {"user_id": user, "by": "self", "at": "now"})

    async def both():
        r = await client.get(f"{API}/users/{user}/messages", headers=admin)
        items = r.json()["items"]
        return items if len(items) == 3 else None

    items = {(m["template"], m["channel"]): m for m in await until(both, within_s=30)}
    held = items[("order.paid", "email")]
    assert held["status"] == "queued"
    assert datetime.fromisoformat(held["next_attempt_at"]) > datetime.now(UTC) + timedelta(hours=1)
    # Security notices are urgent, and email is always among their channels.
    for channel in ("sms", "email"):
        await message_of(client, admin, items[("security.password_changed", channel)]["id"], "sent", until)
    from nexus_ray.stores import postgres

    p = await postgres.pool()
    sms = await p.fetchrow("SELECT payload FROM notif_sandbox WHERE message_id = $1",
                           uuid.UUID(items[("security.password_changed", "sms")]["id"]))
    assert sms["payload"]["to"] == "+64211234567" and "password was changed" in sms["payload"]["text"]


async def test_push_is_signed_with_vapid(client, admin, until):
    user = f"u-{uuid.uuid4().hex[:8]}"
    endpoint = f"https://push.example.test/send/{user}"
    await set_prefs(client, admin, user, push=[{"endpoint": endpoint, "keys": {}}],
                    channels={"deliveries": ["push"]})
    await emit("delivery.status", {"delivery_id": "d1", "shipment_id": "s-9", "status": "delivered",
                                   "customer": user})

    async def recorded():
        from nexus_ray.stores import postgres

        p = await postgres.pool()
        return await p.fetchrow("SELECT payload FROM notif_sandbox WHERE recipient = $1", endpoint)

    request = (await until(recorded, within_s=30))["payload"]
    assert request["payload"]["body"] == "Shipment s-9 is now delivered."
    token, key = request["headers"]["Authorization"].removeprefix("vapid t=").split(", k=")
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    claims = jwt.decode(token, public, algorithms=["ES256"], audience="https://push.example.test")
    assert claims["sub"].startswith("mailto:")


def test_rendering_escapes_and_quiet_hours_span_midnight():
    from datetime import time

    from nexus_ray.deployments.platform.notifications import templates

    data = {"name": '<img src=x onerror="1">', "order": {"id": 7}}
    assert templates.render_html("<p>{{ name }} #{{order.id}}</p>", data) == (
        "<p>&lt;img src=x onerror=&quot;1&quot;&gt; #7</p>")
    assert templates.render_subject("Hi {{name}}\r\nBcc: x@y", {"name": "a\r\nb"}) == "Hi a b Bcc: x@y"
    assert templates.candidates("fr-CA", "en") == ["fr-CA", "fr", "en"]
    contact = service.Contact("u", None, None, [], "en", "Europe/Paris", time(22, 0), time(7, 0))
    late = datetime(2026, 6, 1, 21, 30, tzinfo=UTC)  # 23:30 in Paris
    assert service.quiet_until(contact, late) == datetime(2026, 6, 2, 5, 0, tzinfo=UTC)
    assert service.quiet_until(contact, datetime(2026, 6, 1, 12, 0, tzinfo=UTC)) is None


async def test_a_password_change_in_auth_service_sends_a_security_notice(client, admin, stores, until):
    username = f"n{uuid.uuid4().hex[:10]}"
    password, new_password = f"tr0ub4dor & {uuid.uuid4().hex[:8]}", f"a new passphrase {uuid.uuid4().hex[:6]}"
    r = await client.post("/auth/v1/users", json={"username": username, "email": f"{username}@example.org",
                                                  "password": password})
    assert r.status_code == 201, r.text
    user_id = r.json()["user_id"]
    address = f"{username}@shop.test"
    await set_prefs(client, admin, user_id, email=address, channels={"security": []})  # email stays mandatory
    r = await client.post("/auth/v1/auth/login", json={"username": username, "password": password,
                                                       "device": "laptop"}, headers={"User-Agent": "pytest/1"})
    assert r.status_code == 200, r.text
    r = await client.post("/auth/v1/auth/password", json={"current_password": password, "new_password": new_password},
                          headers={"Authorization": f"Bearer {r.json()['session_token']}"})
    assert r.status_code == 200, r.text
    [notice] = await until(lambda: mail_to(stores, address) or None, within_s=30)
    assert notice["Subject"] == "Your password was changed"
    assert "If this was not you" in parts(notice)["text/plain"]


async def test_a_batch_of_events_queues_each_users_messages_in_four_statements(client, admin):
    """The consumer's handler takes a fetch's events at once: every user's messages on their channels, in their
    language, written in four statements for the whole batch; the same events again queue nothing."""
    from nexus_ray.stores import postgres
    from nexus_ray.stores.events import Event

    en, fr, unknown = (f"u-{uuid.uuid4().hex[:8]}" for _ in range(3))
    await set_prefs(client, admin, en, email=f"{en}@shop.test", locale="en-GB")
    await set_prefs(client, admin, fr, email=f"{fr}@shop.test", phone="+33612345678", locale="fr-CA",
                    channels={"payments": ["email", "sms"]})
    now = datetime.now(UTC)

    def event(topic: str, data: dict) -> Event:
        return Event(id=uuid.uuid4(), topic=topic, key=None, data=data, occurred_at=now, headers={})

    batch = [
        event("order.created", {"order_id": "o-1", "customer": en, "total": 1, "currency": "EUR"}),
        event("payment_intent.payment_failed", {"customer": fr, "amount": 990, "currency": "EUR"}),
        event("order.created", {"order_id": "o-2", "customer": fr, "total": 2, "currency": "EUR"}),
        event("order.created", {"order_id": "o-3", "customer": unknown, "total": 3, "currency": "EUR"}),
        event("order.created", {"order_id": "o-4", "total": 4, "currency": "EUR"}),  # names no user
        event("inventory.low_stock", {"sku": "x"}),  # not a notification
    ]
    sent = await statements.sent_in_transaction(lambda conn: service.on_events(conn, batch))
    assert len(sent) == 4, sent

    async def messages() -> dict[tuple[str, str], dict]:
        p = await postgres.pool()
        rows = await p.fetch("SELECT source_event, channel, recipient, locale, subject, body_text FROM notif_messages "
                             "WHERE source_event = ANY($1::uuid[])", [e.id for e in batch])
        return {(str(r["source_event"]), r["channel"]): dict(r) for r in rows}

    got = await messages()
    assert set(got) == {(str(batch[0].id), "email"), (str(batch[1].id), "email"), (str(batch[1].id), "sms"),
                        (str(batch[2].id), "email")}
    assert got[(str(batch[0].id), "email")]["subject"] == "Order o-1 received"
    assert got[(str(batch[0].id), "email")]["locale"] == "en"
    assert got[(str(batch[2].id), "email")]["subject"] == "Commande o-2 reçue"  # fr-CA falls back to fr
    assert got[(str(batch[1].id), "email")]["locale"] == "en"  # no French template: the default language
    sms = got[(str(batch[1].id), "sms")]
    assert sms["recipient"] == "+33612345678" and "990 EUR" in sms["body_text"]
    async with postgres.transaction() as conn:  # delivered again (a consumer's retry): nothing more
        await service.on_events(conn, batch)
    assert await messages() == got


async def test_a_send_after_the_kept_connections_went_stale_goes_out_in_one_attempt(stores):
    """After a quiet spell the SMTP server has closed every kept connection: the send that finds the first one
    dropped tries once more on a fresh connection, not on the next stale one, and the mail goes in one attempt."""
    from nexus_ray.deployments.platform.notifications import providers

    email_ = providers.SmtpEmail()
    for _ in range(3):  # kept connections the server has since closed
        stale = email_._connect()
        stale.sock.shutdown(socket.SHUT_RDWR)  # as when the server hung up: the next command finds it dropped
        email_._idle.put(stale)
    address = f"stale-{uuid.uuid4().hex[:8]}@shop.test"
    out = providers.Outgoing(id=uuid.uuid4(), channel="email", recipient=address, subject="After a quiet spell",
                             text="hello", html="")
    try:
        assert await email_.send(out) == f"<{out.id}@nexus-notifications>"
    finally:
        email_.close()
    [mail] = mail_to(stores, address)
    assert mail["Subject"] == "After a quiet spell"
