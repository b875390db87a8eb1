"""What the voter import needs of storage: a unit of work holding the voter repository. The
asyncpg implementation is services/scheduler/adapters/uow.py's (the same unit of work as the
campaigns'); tests use a fake (tests/unit/fake_scheduler_uow.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from services.scheduler.voters.domain import ImportRow


class VoterRepository(Protocol):
    async def list_exists(self, organisation_id: uuid.UUID, list_id: uuid.UUID) -> bool: ...

    async def upsert_import_batch(
        self, organisation_id: uuid.UUID, rows: Sequence[ImportRow], *,
        columns: Sequence[str], merge_attributes: bool, list_id: uuid.UUID | None,
    ) -> tuple[int, int, list[tuple[int, int]]]:
        """Upsert a batch of good rows by identity (external_id, else email, else phone): the
        last row of an identity wins; only the file's columns are overwritten, attributes
        merged if `merge_attributes`; with `list_id`, they join the list. (inserted, updated,
        [(superseded line, kept line)])."""


class VotersUnitOfWork(Protocol):
    # Read-only here, so that an implementation may name its own repository's class.
    @property
    def voters(self) -> VoterRepository: ...

    async def __aenter__(self) -> VotersUnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...
