"""API tokens: random, shown once, stored as a SHA-256 hash; `Authorization: Bearer <token>`."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import asyncpg
from fastapi import Header, HTTPException

from services.scheduler import repo
from shared.auth import LookUp, Principal, bearer, hash_token, same_secret, unauthorized

__all__ = ["Principal", "hash_token", "new_token", "require_admin", "require_user"]


def new_token() -> str:
    return "so_" + secrets.token_urlsafe(32)


def look_up(pool: asyncpg.Pool) -> LookUp:
    async def principal(token_hash: bytes) -> Principal | None:
        async with pool.acquire() as conn:
            row = await repo.principal_by_token(conn, token_hash)
        return Principal(row["user_id"], row["organisation_id"], row["name"]) if row else None

    return principal


def require_user(pool: asyncpg.Pool) -> Callable[..., Awaitable[Principal]]:
    return bearer(look_up(pool))


def require_admin(admin_token: str | None) -> Callable[..., Awaitable[None]]:
    async def admin(x_sendout_admin_token: str | None = Header(default=None)) -> None:
        if not admin_token:
            raise HTTPException(404, "administration is disabled (no SENDOUT_ADMIN_TOKEN)")
        if not x_sendout_admin_token or not same_secret(x_sendout_admin_token, admin_token):
            raise unauthorized("the admin token is required: X-Sendout-Admin-Token")

    return admin
