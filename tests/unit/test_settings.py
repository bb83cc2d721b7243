"""Settings refuse the development secrets outside development and describe every field."""

import pytest
from pydantic import ValidationError

from nexus_ray.config import DEV_MASTER_KEY, Settings


def test_development_accepts_defaults(monkeypatch):
    monkeypatch.delenv("NEXUS_MASTER_KEY", raising=False)
    monkeypatch.setenv("NEXUS_ENVIRONMENT", "development")
    assert Settings().master_key.get_secret_value() == DEV_MASTER_KEY


@pytest.mark.parametrize("env", ["test", "production"])
def test_default_master_key_refused_outside_development(monkeypatch, env):
    monkeypatch.delenv("NEXUS_MASTER_KEY", raising=False)
    monkeypatch.setenv("NEXUS_ENVIRONMENT", env)
    with pytest.raises(ValidationError, match="NEXUS_MASTER_KEY"):
        Settings()


def test_short_master_key_refused(monkeypatch):
    monkeypatch.setenv("NEXUS_ENVIRONMENT", "test")
    monkeypatch.setenv("NEXUS_MASTER_KEY", "short")
    with pytest.raises(ValidationError):
        Settings()


def test_production_starts_with_a_master_key_alone(monkeypatch):
    # Signing keys live in key-service (sealed under the master key): no key file to configure.
    monkeypatch.setenv("NEXUS_ENVIRONMENT", "production")
    monkeypatch.setenv("NEXUS_MASTER_KEY", "x" * 40)
    assert Settings().environment == "production"


def test_jwks_cache_must_be_shorter_than_the_token_lifetime(monkeypatch):
    # Otherwise a replica could learn of a rotation only after the rotated key's overlap ended.
    monkeypatch.setenv("NEXUS_TOKEN_MAX_TTL_S", "60")
    monkeypatch.setenv("NEXUS_JWKS_CACHE_S", "60")
    with pytest.raises(ValidationError, match="JWKS_CACHE_S"):
        Settings()
    monkeypatch.setenv("NEXUS_JWKS_CACHE_S", "59")
    assert Settings().jwks_cache_s == 59


def test_every_field_is_described():
    undescribed = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undescribed == []
