"""Documents through PyMongo's ``AsyncMongoClient`` (Motor's successor)."""

from __future__ import annotations

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from nexus_ray.config import get_settings

_client: AsyncMongoClient | None = None


def mongo_client() -> AsyncMongoClient:
    """The process-wide client, created on first use from settings."""
    global _client
    if _client is None:
        url = get_settings().mongo_url
        if not url:
            raise RuntimeError("NEXUS_MONGO_URL is not set: start the embedded stores or configure it")
        _client = AsyncMongoClient(url, serverSelectionTimeoutMS=5000, tz_aware=True)
    return _client


def database() -> AsyncDatabase:
    """The platform's database in the document store."""
    return mongo_client()[get_settings().mongo_database]


async def close_mongo() -> None:
    """Close the process-wide client (tests and shutdown)."""
    global _client
    if _client is not None:
        await _client.close()
        _client = None


async def ping() -> bool:
    """Readiness probe: True when the document store answers ping."""
    res = await mongo_client().admin.command("ping")
    return bool(res.get("ok"))
