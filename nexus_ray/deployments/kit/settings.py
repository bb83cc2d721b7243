"""A service's own settings: fields only that service reads, kept in its package.

A service declares a subclass of :class:`ServiceSettings` in its ``settings.py`` and reads
it with :func:`settings_of`. The variables keep the platform's ``NEXUS_`` prefix (so
``NEXUS_SESSION_IDLE_TIMEOUT_S`` sets ``session_idle_timeout_s`` of session-mgr's
settings), and every field carries a description, as the platform's own settings do.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic_settings import BaseSettings, SettingsConfigDict

from nexus_ray.config import get_settings


class ServiceSettings(BaseSettings):
    """Base of a service's settings: environment variables with the ``NEXUS_`` prefix."""

    # hide_input_in_errors: a refused value (a secret, say) is never repeated in the error.
    model_config = SettingsConfigDict(env_prefix="NEXUS_", env_file=None, extra="ignore", hide_input_in_errors=True)


S = TypeVar("S", bound=ServiceSettings)


def settings_of(cls: type[S]) -> S:
    """The process's instance of ``cls``, read from the environment once.

    It is cached beside the platform settings, so ``get_settings.cache_clear()`` (tests,
    the CLI) makes the next call read the environment again for both.
    """
    sections = get_settings().service_sections
    found = sections.get(cls)
    if found is None:
        found = sections[cls] = cls()
    return found
