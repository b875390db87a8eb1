"""What the identity use cases need of storage: a unit of work (one transaction) holding the
identity repository and the outbox, and a password hasher. The asyncpg implementation is
services/scheduler/adapters/uow.py (its SQL in adapters/repositories.py); tests use a fake
(tests/unit/fake_scheduler_uow.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from services.scheduler.campaigns.unit_of_work import OutboxRecord
from services.scheduler.identity.model import SigningIn, StoredToken
from shared.auth import Principal


class IdentityRepository(Protocol):
    async def organisation_exists(self, organisation_id: uuid.UUID) -> bool: ...

    async def ensure_organisation(self, name: str) -> uuid.UUID:
        """The organisation of that name, added if new; its id."""

    async def upsert_user(self, organisation_id: uuid.UUID, name: str) -> uuid.UUID:
        """The organisation's user of that name, added if new; its id."""

    async def get_user(self, user_id: uuid.UUID) -> Principal | None:
        """The user, row-locked until the unit of work ends (None: no such user)."""

    async def password_hash(self, user_id: uuid.UUID) -> str | None: ...

    async def set_password(
        self, user_id: uuid.UUID, password_hash: str, email: str | None = None
    ) -> None:
        """Store the hash (and the e-mail, if given)."""

    async def signing_in(self, login: str) -> list[SigningIn]:
        """Users with a password whose user name or e-mail (any case) is `login`, oldest
        first, at most 10."""

    async def add_token(self, user_id: uuid.UUID, token_hash: bytes) -> None: ...

    async def revoke_tokens(self, user_id: uuid.UUID) -> list[bytes]:
        """Revoke every live token of the user; their hashes."""

    async def all_tokens(self) -> list[StoredToken]:
        """Every token ever issued, oldest first."""


class UnitOfWork(Protocol):
    @property
    def identity(self) -> IdentityRepository: ...

    async def __aenter__(self) -> UnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def add_to_outbox(self, records: Sequence[OutboxRecord]) -> int | None:
        """Records to publish once this unit of work commits, in order; the last one's id."""

    async def commit(self) -> None: ...


class Hasher(Protocol):
    """Password hashes (identity/passwords.py: argon2id; tests: a fast fake)."""

    # Verified when no user matches, so a wrong login costs as long as a wrong password.
    dummy_hash: str

    async def hash(self, password: str) -> str: ...

    async def verify(self, password_hash: str, password: str) -> bool: ...
