"""API tokens: random, shown once, stored as a SHA-256 hash; `Authorization: Bearer <token>`."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from fastapi import Header, HTTPException

from services.scheduler import repo


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    organisation_id: uuid.UUID
    name: str


def new_token() -> str:
    return "so_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def require_user(pool: asyncpg.Pool) -> Callable[..., Awaitable[Principal]]:
    async def authenticated(authorization: str | None = Header(default=None)) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise _unauthorized("an API token is required: Authorization: Bearer <token>")
        async with pool.acquire() as conn:
            row = await repo.principal_by_token(conn, hash_token(authorization[7:].strip()))
        if row is None:
            raise _unauthorized("unknown or revoked API token")
        return Principal(row["user_id"], row["organisation_id"], row["name"])

    return authenticated


def optional_user(pool: asyncpg.Pool) -> Callable[..., Awaitable[Principal | None]]:
    """The caller if a token is given (a bad one is still refused), else None."""
    required = require_user(pool)

    async def maybe(authorization: str | None = Header(default=None)) -> Principal | None:
        return await required(authorization) if authorization else None

    return maybe


def require_admin(admin_token: str | None) -> Callable[..., Awaitable[None]]:
    async def admin(x_sendout_admin_token: str | None = Header(default=None)) -> None:
        if not admin_token:
            raise HTTPException(404, "administration is disabled (no SENDOUT_ADMIN_TOKEN)")
        if not x_sendout_admin_token or not hmac.compare_digest(
            x_sendout_admin_token, admin_token
        ):
            raise _unauthorized("the admin token is required: X-Sendout-Admin-Token")

    return admin
