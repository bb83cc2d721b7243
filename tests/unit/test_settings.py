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


def _service_settings_classes():
    import importlib
    import importlib.util

    from nexus_ray.catalog import SERVICES
    from nexus_ray.deployments.kit.settings import ServiceSettings

    found = []
    for s in SERVICES:
        try:
            spec = importlib.util.find_spec(f"{s.package}.settings")
        except ModuleNotFoundError:
            continue
        if spec is None:
            continue
        module = importlib.import_module(f"{s.package}.settings")
        found += [v for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings]
    return found


def test_every_service_setting_is_described_and_not_also_global():
    classes = _service_settings_classes()
    assert classes, "no service declares its own settings"
    for cls in classes:
        assert [n for n, f in cls.model_fields.items() if not f.description] == [], cls.__name__
        # One home per setting: a service's field is not also a platform-wide one.
        assert set(cls.model_fields) & set(Settings.model_fields) == set(), cls.__name__


def test_service_settings_read_the_environment_and_follow_cache_clear(monkeypatch):
    from nexus_ray.config import get_settings
    from nexus_ray.deployments.kit.settings import settings_of
    from nexus_ray.deployments.platform.sessions.settings import SessionSettings

    monkeypatch.setenv("NEXUS_SESSION_SHARDS", "7")
    get_settings.cache_clear()
    assert settings_of(SessionSettings).session_shards == 7
    assert settings_of(SessionSettings) is settings_of(SessionSettings)
    monkeypatch.setenv("NEXUS_SESSION_SHARDS", "3")
    get_settings.cache_clear()
    assert settings_of(SessionSettings).session_shards == 3
    monkeypatch.delenv("NEXUS_SESSION_SHARDS")
    get_settings.cache_clear()
