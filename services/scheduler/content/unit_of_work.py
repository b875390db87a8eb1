"""What the content use cases need of storage: a unit of work (one transaction) holding the
content repository. The asyncpg implementation is services/scheduler/adapters/uow.py (its SQL
in adapters/repositories.py); tests use a fake (tests/unit/fake_scheduler_uow.py)."""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Protocol

from services.scheduler.content.model import Sender, SenderIn, TemplateIn, TemplateVersion


class ContentRepository(Protocol):
    async def add_sender(self, sender: SenderIn, organisation_id: uuid.UUID) -> Sender: ...

    async def sender(self, sender_id: uuid.UUID, organisation_id: uuid.UUID) -> Sender | None:
        """The organisation's sender (None: another's, or none)."""

    async def add_template(
        self, template: TemplateIn, organisation_id: uuid.UUID
    ) -> TemplateVersion:
        """A new template at version 1."""

    async def latest_template(
        self, template_id: uuid.UUID, organisation_id: uuid.UUID
    ) -> TemplateVersion | None:
        """The organisation's template at its latest version (None: another's, or none)."""

    async def lock_template(self, template_id: uuid.UUID, organisation_id: uuid.UUID) -> bool:
        """Whether the organisation has the template; locked until the unit of work ends."""

    async def add_template_version(
        self, template_id: uuid.UUID, template: TemplateIn
    ) -> TemplateVersion:
        """The template's next version (and its name, as given)."""


class UnitOfWork(Protocol):
    @property
    def content(self) -> ContentRepository: ...

    async def __aenter__(self) -> UnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...
