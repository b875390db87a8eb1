"""Passwords and sign-in for people: argon2id hashes, and limits on failed sign-ins (the routes
are entrypoints/http/identity.py). Failed sign-ins are rate limited per login (here: whatever
the client, so guessing one person's password is slow) and per client address (the console
adds its own per browser address, since here every console user comes from the console's
address)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field

from shared.db import Conn

MIN_LENGTH = 8
# argon2-cffi's defaults are argon2id (RFC 9106's low-memory profile).
_hasher = PasswordHasher()
# Verified when no user matches, so a wrong login costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    login: str = Field(min_length=1, max_length=320, description="user name or e-mail")
    password: str = Field(min_length=1, max_length=1024)


class ChangePassword(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=MIN_LENGTH, max_length=1024)


async def hash_password(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise ValueError(f"a password needs at least {MIN_LENGTH} characters")
    return await asyncio.to_thread(_hasher.hash, password)


async def verify(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


async def set_password(conn: Conn, user_id: uuid.UUID, password_hash: str,
                       email: str | None = None) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = $2, password_set_at = now(), "
        "email = coalesce($3, email) WHERE id = $1",
        user_id, password_hash, email,
    )


class WrongPassword(Exception):
    """The current password given to change it is not the user's (403)."""


class FailureLimiter:
    """At most `limit` failed sign-ins per key in a sliding `window` (seconds). In memory: each
    scheduler replica counts its own (a limit, not an account lock an attacker could use)."""

    def __init__(self, limit: int = 5, window: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.failures: dict[str, deque[float]] = {}

    def retry_after(self, *keys: str) -> float:
        now = self.clock()
        wait = 0.0
        for key in keys:
            times = self.failures.get(key)
            while times and now - times[0] > self.window:
                times.popleft()
            if times is not None and not times:
                del self.failures[key]
            elif times and len(times) >= self.limit:
                wait = max(wait, self.window - (now - times[0]))
        return wait

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            self.failures.setdefault(key, deque()).append(now)

    def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)


async def user_signing_in(pool: asyncpg.Pool, login: str, password: str) -> asyncpg.Record | None:
    """The one user whose user name or e-mail is `login` and whose password this is; None
    otherwise. A login nobody has still costs one hash check: its answer takes as long."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """
            SELECT u.id, u.organisation_id, u.name, u.password_hash, o.name AS organisation
            FROM users u JOIN organisations o ON o.id = u.organisation_id
            WHERE u.password_hash IS NOT NULL AND (lower(u.email) = lower($1) OR u.name = $1)
            ORDER BY u.created_at LIMIT 10
            """,
            login,
        )
    matches = [r for r in rows if await verify(r["password_hash"], password)]
    if not rows:
        await verify(_DUMMY_HASH, password)
    return matches[0] if len(matches) == 1 else None
