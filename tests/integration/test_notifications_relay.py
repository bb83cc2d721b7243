"""notification-service's SMTP client against an external-style relay: STARTTLS required, then AUTH; a wrong
password or a relay without STARTTLS is a permanent failure, never a plaintext login."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import uuid

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.deployments.platform.notifications import providers
from nexus_ray.deployments.platform.notifications.settings import NotificationSettings
from nexus_ray.runtime.embedded import free_port

pytestmark = pytest.mark.integration

PASSWORD = "relay-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("relay")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((session.auth_data.login.decode(), list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"nexus",
                                                                                          PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


def relay(certificate, *, tls: bool) -> tuple[Controller, Inbox]:
    inbox = Inbox()
    options = {"authenticator": authenticate, "auth_require_tls": True}
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
        options |= {"tls_context": context, "require_starttls": True}
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), server_hostname="127.0.0.1", **options)
    controller.start()
    return controller, inbox


def message(to: str) -> providers.Outgoing:
    return providers.Outgoing(id=uuid.uuid4(), channel="email", recipient=to, subject="Relay", text="hello",
                              html="<p>hello</p>")


async def test_starttls_then_auth_through_an_external_relay(certificate):
    s = settings_of(NotificationSettings)
    before = s.notifications_smtp_ca_file
    s.notifications_smtp_ca_file = str(certificate / "cert.pem")
    controller, inbox = relay(certificate, tls=True)
    try:
        port = controller.port
        good = providers.SmtpEmail(f"smtp://nexus:{PASSWORD}@127.0.0.1:{port}?starttls=require")
        await good.send(message("someone@shop.test"))
        good.close()
        [(login, rcpt, content)] = inbox.messages
        assert login == "nexus" and rcpt == ["someone@shop.test"] and b"Subject: Relay" in content
        bad = providers.SmtpEmail(f"smtp://nexus:wrong@127.0.0.1:{port}")
        with pytest.raises(providers.PermanentFailure, match="535"):
            await bad.send(message("someone@shop.test"))
        assert len(inbox.messages) == 1
    finally:
        controller.stop()
        s.notifications_smtp_ca_file = before


async def test_a_relay_without_starttls_is_refused_when_required(certificate):
    controller, inbox = relay(certificate, tls=False)
    try:
        port = controller.port
        plain = providers.SmtpEmail(f"smtp://nexus:{PASSWORD}@127.0.0.1:{port}?starttls=require")
        with pytest.raises(providers.PermanentFailure, match="STARTTLS"):
            await plain.send(message("someone@shop.test"))
        assert inbox.messages == []
    finally:
        controller.stop()
    assert "wrong" not in repr(providers.Relay.parse(f"smtp://nexus:{PASSWORD}@h:25"))
    assert PASSWORD not in repr(providers.Relay.parse(f"smtp://nexus:{PASSWORD}@h:25"))
