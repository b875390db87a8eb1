"""Identity's rules, no I/O: who a user is, what a sign-in and a password change take, the
events a token's issue or revocation announces, and the limit on failed sign-ins."""

from __future__ import annotations

import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shared.auth import Principal
from shared.events import ApiTokenIssued, ApiTokenRevoked

MIN_LENGTH = 8


class CreateUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    # For people who sign in to the console (POST /auth/sign-in); stored as an argon2id hash.
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    email: str | None = Field(default=None, max_length=320)


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    login: str = Field(min_length=1, max_length=320, description="user name or e-mail")
    password: str = Field(min_length=1, max_length=1024)


class ChangePassword(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=MIN_LENGTH, max_length=1024)


class WrongPassword(Exception):
    """The current password given to change it is not the user's (403)."""


@dataclass(frozen=True)
class SigningIn:
    """A user who may be signing in: who they are, their organisation's name, their hash."""

    user: Principal
    organisation: str
    password_hash: str


@dataclass(frozen=True)
class StoredToken:
    """A token ever issued, with its user (what the identity topic must say of it)."""

    token_hash: bytes
    user_id: uuid.UUID
    organisation_id: uuid.UUID
    user_name: str
    revoked_at: datetime | None


def new_token() -> str:
    """An API token: random, shown once, stored as a SHA-256 hash."""
    return "so_" + secrets.token_urlsafe(32)


def signed_in_view(who: SigningIn, token: str) -> dict[str, str]:
    """The answer to a sign-in: the fresh token and who it is."""
    user = who.user
    return {"token": token, "user_id": str(user.user_id),
            "organisation_id": str(user.organisation_id),
            "organisation": who.organisation, "name": user.name}


def token_issued(user: Principal, token_hash: bytes) -> ApiTokenIssued:
    return ApiTokenIssued(token_hash=token_hash.hex(), user_id=user.user_id,
                          organisation_id=user.organisation_id, user_name=user.name)


def tokens_revoked(user: Principal, hashes: Sequence[bytes]) -> list[ApiTokenRevoked]:
    return [ApiTokenRevoked(token_hash=h.hex(), user_id=user.user_id,
                            organisation_id=user.organisation_id) for h in hashes]


def restated(tokens: Iterable[StoredToken]) -> list[ApiTokenIssued | ApiTokenRevoked]:
    """What every token is, said again: revoked, or issued to its user."""
    events: list[ApiTokenIssued | ApiTokenRevoked] = []
    for t in tokens:
        user = Principal(t.user_id, t.organisation_id, t.user_name)
        events.extend(tokens_revoked(user, [t.token_hash]) if t.revoked_at is not None
                      else [token_issued(user, t.token_hash)])
    return events


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
