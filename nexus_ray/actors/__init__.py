"""Stateful Ray actors: live state of sessions, fleets, streams and rooms, durable in Redis."""

from nexus_ray.actors.base import NAMESPACE, PersistentActor, actor_name, get_or_create

__all__ = ["NAMESPACE", "PersistentActor", "actor_name", "get_or_create"]
