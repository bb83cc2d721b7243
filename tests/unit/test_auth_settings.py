"""The identity services' own settings live in their packages, keep their NEXUS_ variables and describe every field."""

import pytest

from nexus_ray.config import Settings, get_settings
from nexus_ray.deployments.auth.auth.settings import AuthSettings
from nexus_ray.deployments.auth.auth.settings import settings as auth_settings
from nexus_ray.deployments.auth.oauth.settings import OAuthSettings
from nexus_ray.deployments.auth.users.settings import UsersSettings


@pytest.mark.parametrize("cls", [AuthSettings, OAuthSettings, UsersSettings])
def test_fields_are_described_and_no_longer_platform_settings(cls):
    assert [n for n, f in cls.model_fields.items() if not f.description] == []
    assert not set(cls.model_fields) & set(Settings.model_fields)


def test_the_same_variables_set_them(monkeypatch):
    monkeypatch.setenv("NEXUS_AUTH_LOCKOUT_THRESHOLD", "7")
    monkeypatch.setenv("NEXUS_OAUTH_CODE_TTL_S", "30")
    monkeypatch.setenv("NEXUS_MAIL_PROVIDER", "other")
    assert AuthSettings().auth_lockout_threshold == 7
    assert OAuthSettings().oauth_code_ttl_s == 30
    assert UsersSettings().mail_provider == "other"
    get_settings.cache_clear()  # the next read of the platform settings reads the service sections afresh
    try:
        assert auth_settings().auth_lockout_threshold == 7
    finally:
        monkeypatch.delenv("NEXUS_AUTH_LOCKOUT_THRESHOLD")
        get_settings.cache_clear()
