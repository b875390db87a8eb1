"""API tokens as every service checks them: `Authorization: Bearer <token>`, looked up by the
SHA-256 of the token (tokens are never stored). The scheduler issues tokens; the tracker learns
them from `sendout.identity.v1`. Each service passes its own lookup."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer


@dataclass(frozen=True)
class Principal:
    """The caller: a user of one organisation. Everything they see or do is scoped to it."""

    user_id: uuid.UUID
    organisation_id: uuid.UUID
    name: str


LookUp = Callable[[bytes], Awaitable[Principal | None]]

# The OpenAPI security scheme of every protected operation ("bearer"); the 401 answers are ours
# (auto_error off), saying what is missing or wrong.
API_TOKEN = HTTPBearer(
    scheme_name="bearer", auto_error=False,
    description="An API token (POST /admin/users issues them): Authorization: Bearer <token>")


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a header's value with a secret: as bytes, so that a header
    of any characters is simply unequal (hmac.compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def scope_bearer(look_up: Callable[[], LookUp | None]) -> Callable[[Any], Awaitable[bool]]:
    """Whether an ASGI request scope carries a known token: for the input guard, which checks
    the caller before reading a large body (`shared.http_input.BodyLimit.authenticate_first`).
    `look_up` gives the look-up once the service has started (None before)."""

    async def known(scope: Any) -> bool:
        current = look_up()
        if current is None:
            return False
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                text = value.decode("latin-1")
                if text.startswith("Bearer "):
                    return await current(hash_token(text[7:].strip())) is not None
        return False

    return known


def bearer(look_up: LookUp) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the caller, or 401 with what is wrong."""

    async def authenticated(
        credentials: HTTPAuthorizationCredentials | None = Depends(API_TOKEN),
    ) -> Principal:
        if credentials is None or not credentials.credentials.strip():
            raise unauthorized("an API token is required: Authorization: Bearer <token>")
        principal = await look_up(hash_token(credentials.credentials.strip()))
        if principal is None:
            raise unauthorized("unknown or revoked API token")
        return principal

    return authenticated
