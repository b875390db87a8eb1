"""API tokens: random, shown once, stored as a SHA-256 hash; `Authorization: Bearer <token>`."""

from __future__ import annotations

import secrets

import asyncpg

from services.scheduler import repo
from shared.auth import LookUp, Principal, hash_token

__all__ = ["Principal", "hash_token", "look_up", "new_token"]


def new_token() -> str:
    return "so_" + secrets.token_urlsafe(32)


def look_up(pool: asyncpg.Pool) -> LookUp:
    async def principal(token_hash: bytes) -> Principal | None:
        async with pool.acquire() as conn:
            row = await repo.principal_by_token(conn, token_hash)
        return Principal(row["user_id"], row["organisation_id"], row["name"]) if row else None

    return principal
