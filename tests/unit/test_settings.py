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


def test_production_needs_a_signing_key_file(monkeypatch):
    monkeypatch.setenv("NEXUS_ENVIRONMENT", "production")
    monkeypatch.setenv("NEXUS_MASTER_KEY", "x" * 40)
    monkeypatch.delenv("NEXUS_JWT_SIGNING_KEY_FILE", raising=False)
    with pytest.raises(ValidationError, match="SIGNING_KEY_FILE"):
        Settings()


def test_every_field_is_described():
    undescribed = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undescribed == []
