"""pv-keys' settings live in its package, under the same NEXUS_ variable, and key-service reads them from there."""

from __future__ import annotations

import pytest

from nexus_ray.config import Settings, get_settings
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.deployments.specialized.keys import service as key_service
from nexus_ray.deployments.specialized.pv_keys.settings import PvKeysSettings


@pytest.fixture
def settings_reread():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_pv_key_max_ttl_is_pv_keys_own_setting(monkeypatch, settings_reread):
    monkeypatch.setenv("NEXUS_PV_KEY_MAX_TTL_S", "7200")
    assert "pv_key_max_ttl_s" not in Settings.model_fields
    assert settings_of(PvKeysSettings).pv_key_max_ttl_s == 7200
    # The overlap of a rotated pv-keys signing key follows it.
    assert key_service.purpose_of("pv-keys").max_ttl_s(get_settings()) == 7200


def test_pv_keys_settings_are_described_and_checked(monkeypatch, settings_reread):
    assert [n for n, f in PvKeysSettings.model_fields.items() if not f.description] == []
    monkeypatch.setenv("NEXUS_PV_KEY_MAX_TTL_S", "59")
    with pytest.raises(ValueError, match="pv_key_max_ttl_s"):
        settings_of(PvKeysSettings)
