"""The content use cases: add a sender, add a template, edit a template (a new version). Each
takes a unit of work (content/unit_of_work.py) and acts within the caller's organisation:
another organisation's template is "not found"."""

from __future__ import annotations

import uuid

from services.scheduler.content.model import Sender, SenderIn, TemplateIn, TemplateVersion
from services.scheduler.content.unit_of_work import UnitOfWork
from services.scheduler.errors import NotFound


async def create_sender(uow: UnitOfWork, cmd: SenderIn, organisation_id: uuid.UUID) -> Sender:
    async with uow:
        sender = await uow.content.add_sender(cmd, organisation_id)
        await uow.commit()
    return sender


async def create_template(
    uow: UnitOfWork, cmd: TemplateIn, organisation_id: uuid.UUID
) -> TemplateVersion:
    async with uow:
        version = await uow.content.add_template(cmd, organisation_id)
        await uow.commit()
    return version


async def edit_template(
    uow: UnitOfWork, template_id: uuid.UUID, cmd: TemplateIn, organisation_id: uuid.UUID
) -> TemplateVersion:
    """Adds a version; campaigns already created keep the version they pinned."""
    async with uow:
        if not await uow.content.lock_template(template_id, organisation_id):
            raise NotFound(f"template {template_id} not found")
        version = await uow.content.add_template_version(template_id, cmd)
        await uow.commit()
    return version
