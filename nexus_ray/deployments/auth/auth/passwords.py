"""Passwords: the policy a new one must meet, and argon2id hashing and verification.

Hashing costs about 64 MiB and tens of milliseconds of CPU by design, so it runs in a
worker thread (the event loop keeps serving) and at most :data:`_MAX_CONCURRENT` hashes
run at once per process: a flood of logins queues instead of exhausting memory.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from nexus_ray.deployments.auth.auth.settings import settings as auth_settings
from nexus_ray.exceptions import ValidationFailed

MAX_LENGTH = 256
_MAX_CONCURRENT = 4
_slots: asyncio.Semaphore | None = None

# The most common passwords of public breach corpora that are long enough to pass the length rule.
_COMMON = frozenset(
    {
        "1234567890", "12345678910", "123456789a", "qwertyuiop", "1q2w3e4r5t", "password1", "password12",
        "password123", "password1234", "iloveyou12", "qwerty1234", "qwerty12345", "1qaz2wsx3edc", "abcdefghij",
        "0123456789", "9876543210", "1111111111", "passw0rd12", "letmein123", "welcome123", "administrator",
        "changeme123", "zaq12wsxcde", "football123", "monkey12345", "sunshine123", "princess123",
    }
)


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    s = auth_settings()
    return PasswordHasher(
        time_cost=s.password_time_cost,
        memory_cost=s.password_memory_kib,
        parallelism=s.password_parallelism,
        type=Type.ID,
    )


@lru_cache(maxsize=1)
def _decoy_hash() -> str:
    # Verified against when the account does not exist, so the answer takes as long either way.
    return _hasher().hash("decoy password for unknown accounts")


def _semaphore() -> asyncio.Semaphore:
    global _slots
    if _slots is None:
        _slots = asyncio.Semaphore(_MAX_CONCURRENT)
    return _slots


def check_policy(password: str, *, field: str = "password", username: str | None = None) -> None:
    """Refuse (422 naming ``field``) a password that is too short, too long, common or the username."""
    s = auth_settings()
    if len(password) < s.password_min_length:
        raise ValidationFailed.for_field(field, f"must have at least {s.password_min_length} characters", "too_short")
    if len(password) > MAX_LENGTH:
        raise ValidationFailed.for_field(field, f"must have at most {MAX_LENGTH} characters", "too_long")
    lowered = password.lower()
    if lowered in _COMMON or len(set(password)) < 4:
        raise ValidationFailed.for_field(field, "is too easy to guess", "too_common")
    if username and len(username) >= 3 and username.lower() in lowered:
        raise ValidationFailed.for_field(field, "must not contain the username", "contains_username")


async def hash_password(password: str) -> str:
    """The argon2id PHC string of ``password``."""
    async with _semaphore():
        return await asyncio.to_thread(_hasher().hash, password)


async def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``; with no stored hash it still costs one verification."""
    if len(password) > MAX_LENGTH:
        return False
    async with _semaphore():
        return await asyncio.to_thread(_verify, stored, password)


def _verify(stored: str | None, password: str) -> bool:
    if stored is None:
        _verify(_decoy_hash(), password)
        return False
    try:
        return _hasher().verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than the current settings."""
    try:
        return _hasher().check_needs_rehash(stored)
    except InvalidHashError:
        return True
