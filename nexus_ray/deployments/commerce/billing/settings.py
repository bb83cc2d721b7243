"""billing-service's own settings (variables ``NEXUS_BILLING_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    """Idempotency, the payment provider, ledger postings and webhook delivery of billing-service."""

    billing_idempotency_ttl_s: float = Field(
        86400, gt=0, description="How long an idempotency key binds its first request (Stripe: 24 h), seconds; after "
        "it the same key is a new request.")
    billing_idempotency_purge_s: float = Field(
        60, gt=0, description="How often expired idempotency keys are deleted, seconds.")
    billing_provider: Literal["sandbox"] = Field(
        "sandbox", description="The payment provider. Only the sandbox exists: test cards, no real money.")
    billing_sandbox_action_delay_s: float = Field(
        2.0, ge=0, description="How long after authorisation the sandbox completes a customer action (3-D Secure) "
        "that a test card asks for, seconds.")
    billing_sandbox_poll_s: float = Field(
        0.5, gt=0, description="How often the sandbox looks for completed customer actions to report, seconds.")
    billing_ledger_retry_s: float = Field(
        5.0, gt=0, description="How often ledger postings that did not go through at once are tried again, seconds "
        "(and how old a pending posting must be before the loop takes it over).")
    billing_ledger_shards: int = Field(
        8, ge=1, le=64, description="Balance shards of billing's ledger accounts: every capture and refund of a "
        "currency touches the same two accounts.")
    billing_webhook_timeout_s: float = Field(
        10.0, gt=0, description="How long one webhook delivery attempt may take, seconds; longer counts as a failure.")
    billing_webhook_backoff_s: float = Field(
        30.0, gt=0, description="Wait before the second attempt of a failed delivery, seconds; doubled after each "
        "further failure (30 s, 1 min, 2 min...) up to billing_webhook_backoff_max_s.")
    billing_webhook_backoff_max_s: float = Field(
        6 * 3600, gt=0, description="Longest wait between two delivery attempts, seconds.")
    billing_webhook_max_attempts: int = Field(
        12, ge=1, description="Attempts of one delivery before it is marked failed.")
    billing_webhook_poll_s: float = Field(
        1.0, gt=0, description="How often due webhook deliveries are looked for, seconds (new events wake the "
        "deliverer of their process at once).")
    billing_webhook_allow_http: bool = Field(
        True, description="Whether endpoint URLs may be plain http (development and tests); production sets false "
        "so that only https endpoints are accepted.")
