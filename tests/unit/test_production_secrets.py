"""Outside development the platform refuses the development master key: loudly, clearly, and without
repeating the secret it was given."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from nexus_ray.cli import app
from nexus_ray.config import DEV_MASTER_KEY, Settings, get_settings

TOO_SHORT = "short-but-still-a-secret"


@pytest.fixture
def settings_reread():
    """Settings read again from the environment the test sets, and again after it."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_refused_master_key_is_not_repeated_in_the_error(monkeypatch):
    # Only these two settings in the environment: pydantic would print its input (this secret) in full.
    for name in [n for n in os.environ if n.startswith("NEXUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NEXUS_ENVIRONMENT", "production")
    monkeypatch.setenv("NEXUS_MASTER_KEY", TOO_SHORT)
    with pytest.raises(ValidationError, match="NEXUS_MASTER_KEY") as err:
        Settings()
    shown = f"{err.value} {err.value!r}"
    assert not [TOO_SHORT[i:i + 8] for i in range(len(TOO_SHORT) - 7) if TOO_SHORT[i:i + 8] in shown], shown


@pytest.mark.parametrize("secret", [DEV_MASTER_KEY, TOO_SHORT])
@pytest.mark.parametrize("command", [["up", "--detach"], ["reseal-keys"], ["token", "ops"]])
def test_nexus_refuses_to_start_in_production_without_a_real_master_key(monkeypatch, settings_reread, secret, command):
    monkeypatch.setenv("NEXUS_ENVIRONMENT", "production")
    monkeypatch.setenv("NEXUS_MASTER_KEY", secret)
    result = CliRunner().invoke(app, command)
    # One line that says what to do, before anything is started; no traceback, no secret.
    assert result.exit_code == 2, result.output
    assert "refused to start: NEXUS_MASTER_KEY must be set to a secret of 32+ characters" in " ".join(
        result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert secret not in result.output and "Traceback" not in result.output
