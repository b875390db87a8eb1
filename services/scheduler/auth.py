"""API tokens: random, shown once, stored as a SHA-256 hash; `Authorization: Bearer <token>`."""

from __future__ import annotations

import asyncpg

from services.scheduler.adapters.repositories import AsyncpgIdentity
from services.scheduler.identity.model import new_token
from shared.auth import LookUp, Principal, hash_token

__all__ = ["Principal", "hash_token", "look_up", "new_token"]


def look_up(pool: asyncpg.Pool) -> LookUp:
    async def principal(token_hash: bytes) -> Principal | None:
        async with pool.acquire() as conn:
            return await AsyncpgIdentity(conn).principal_by_token(token_hash)

    return principal
