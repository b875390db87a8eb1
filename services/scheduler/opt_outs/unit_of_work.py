"""What the opt-out use cases need of storage: a unit of work (one transaction) holding the
opt-out repository and the outbox. The asyncpg implementation is
services/scheduler/adapters/uow.py (its SQL in adapters/repositories.py); tests use a fake
(tests/unit/fake_scheduler_uow.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from services.scheduler.campaigns.unit_of_work import OutboxRecord


class OptOutRepository(Protocol):
    async def organisation_exists(self, organisation_id: uuid.UUID) -> bool: ...

    async def add(
        self, organisation_id: uuid.UUID, address: str, source: str, keyword: str | None
    ) -> bool:
        """Record the opt-out; False if the address was opted out already."""

    async def mark_voters(self, organisation_id: uuid.UUID, address: str) -> None:
        """Mark the organisation's voters with that phone or e-mail as opted out."""

    async def opted_out(
        self, organisation_id: uuid.UUID, addresses: Sequence[str]
    ) -> set[str]:
        """Those of `addresses` the organisation has opted out."""


class UnitOfWork(Protocol):
    @property
    def opt_outs(self) -> OptOutRepository: ...

    async def __aenter__(self) -> UnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def add_to_outbox(self, records: Sequence[OutboxRecord]) -> int | None:
        """Records to publish once this unit of work commits, in order; the last one's id."""

    async def commit(self) -> None: ...
