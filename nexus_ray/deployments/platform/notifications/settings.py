"""notification-service's own settings (variables ``NEXUS_NOTIFICATIONS_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class NotificationSettings(ServiceSettings):
    """Sender identity, retries, the delivery loop and Web Push keys."""

    notifications_from: str = Field("Nexus <no-reply@nexus.test>", description="From address of email.")
    notifications_default_locale: str = Field("en", description="Locale used when a template has none closer.")
    notifications_max_attempts: int = Field(5, ge=1, le=50, description="Attempts before a message is dead.")
    notifications_retry_base_s: float = Field(
        2.0, gt=0, description="Backoff after the first failed attempt, seconds; doubled after each further one.")
    notifications_retry_max_s: float = Field(900.0, gt=0, description="Longest backoff between two attempts.")
    notifications_poll_s: float = Field(0.5, gt=0, description="Seconds between looks for due messages when idle.")
    notifications_batch: int = Field(64, ge=1, le=1000, description="Messages one delivery round takes at once.")
    notifications_lease_s: float = Field(
        60.0, gt=0, description="A message being sent by a replica that then crashed is sent again after this.")
    notifications_smtp_timeout_s: float = Field(15.0, gt=0, description="Timeout of one SMTP exchange.")
    notifications_smtp_ca_file: str = Field(
        "", description="CA bundle (PEM file) the relay's TLS certificate is checked against; empty: the system's.")
    notifications_smtp_connections: int = Field(8, ge=1, le=64, description="SMTP connections kept open.")
    notifications_consume_events: bool = Field(True, description="Run the event consumer in this process.")
    notifications_deliver: bool = Field(True, description="Run the delivery loop in this process.")
    notifications_vapid_private_key: str = Field(
        "", repr=False, description="Web Push VAPID key: PEM of a P-256 private key. Empty outside production: "
        "a key made for this process (subscriptions made against it do not survive a restart).")
    notifications_vapid_subject: str = Field("mailto:ops@nexus.test", description="VAPID `sub` claim.")
