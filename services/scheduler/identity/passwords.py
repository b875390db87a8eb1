"""Password hashes: argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile), computed
off the event loop. The use cases take a `Hasher`; this is the real one."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.scheduler.identity.model import MIN_LENGTH

_hasher = PasswordHasher()
# Verified when no user matches, so a wrong login costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


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


class Argon2:
    """The `Hasher` of the running scheduler."""

    dummy_hash = _DUMMY_HASH

    async def hash(self, password: str) -> str:
        return await hash_password(password)

    async def verify(self, password_hash: str, password: str) -> bool:
        return await verify(password_hash, password)


ARGON2 = Argon2()
