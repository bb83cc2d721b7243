"""A service's scopes, derived from the catalog: ``<namespace>:<slug>:read|write|admin``.

Services never spell their scope strings: ``SCOPES = scopes_of("session-mgr")`` and then
``authorize(SCOPES.read)`` (or ``SCOPES.action("decrypt")`` for a finer action). A principal
holding ``<namespace>:<slug>:*`` or ``<namespace>:*`` holds them all.
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

    def action(self, name: str) -> str:
        """A scope for an action beyond read/write/admin (``SCOPES.action("decrypt")``)."""
        if not name or ":" in name or not name.replace("-", "").isalnum():
            raise ValueError(f"not an action name: {name!r}")
        return self.read.rsplit(":", 1)[0] + ":" + name


def scopes_of(service_name: str) -> Scopes:
    """The scopes of the catalogued service ``service_name`` (KeyError if it is not catalogued)."""
    s = service(service_name)
    prefix = f"{s.namespace}:{s.slug}"
    return Scopes(read=f"{prefix}:read", write=f"{prefix}:write", admin=f"{prefix}:admin")
