"""API tokens: random, shown once, stored as a SHA-256 hash; `Authorization: Bearer <token>`.
Issued and revoked by the identity use cases (identity/use_cases.py); here the caller's look-up,
and the issue on a caller's own connection."""

from __future__ import annotations

import asyncpg

from services.scheduler import outbox
from services.scheduler.adapters.repositories import AsyncpgIdentity
from services.scheduler.identity.model import new_token, token_issued
from shared.auth import LookUp, Principal, hash_token
from shared.db import Conn

__all__ = ["Principal", "hash_token", "issue_token", "look_up", "new_token"]


def look_up(pool: asyncpg.Pool) -> LookUp:
    async def principal(token_hash: bytes) -> Principal | None:
        async with pool.acquire() as conn:
            return await AsyncpgIdentity(conn).principal_by_token(token_hash)

    return principal


async def issue_token(conn: Conn, user: Principal) -> str:
    """A new token for the user inside the caller's transaction, its event written to the
    outbox in it: published once committed, never for a token the rollback undid."""
    token = new_token()
    token_hash = hash_token(token)
    await AsyncpgIdentity(conn).add_token(user.user_id, token_hash)
    await outbox.add(conn, outbox.identity([token_issued(user, token_hash)]))
    return token
