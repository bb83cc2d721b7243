"""A service's scopes, derived from the catalog: ``<namespace>:<slug>:read|write|admin``.

Services never spell their scope strings: ``SCOPES = scopes_of("session-mgr")`` and then
``authorize(SCOPES.read)``. A principal holding ``<namespace>:<slug>:*`` or
``<namespace>:*`` holds all three.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexus_ray.catalog import service


@dataclass(frozen=True)
class Scopes:
    """The three scopes of one service."""

    read: str
    write: str
    admin: str

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.read, self.write, self.admin)


def scopes_of(service_name: str) -> Scopes:
    """The scopes of the catalogued service ``service_name`` (KeyError if it is not catalogued)."""
    s = service(service_name)
    prefix = f"{s.namespace}:{s.slug}"
    return Scopes(read=f"{prefix}:read", write=f"{prefix}:write", admin=f"{prefix}:admin")
