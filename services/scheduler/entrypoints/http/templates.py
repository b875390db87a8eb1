"""Templates: versioned; a campaign pins the version it was created with."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, status

from services.scheduler.content import use_cases, views
from services.scheduler.content.model import TemplateIn
from services.scheduler.entrypoints.http.dependencies import ContentUow, Organisation, Pool

router = APIRouter(tags=["templates"])


@router.post("/templates", status_code=status.HTTP_201_CREATED)
async def create_template(
    cmd: TemplateIn, org: Organisation, uow: ContentUow
) -> dict[str, Any]:
    version = await use_cases.create_template(uow, cmd, org)
    return {"id": str(version.template_id), "version": version.version, **cmd.model_dump()}


@router.get("/templates")
async def list_templates(org: Organisation, pool: Pool) -> dict[str, Any]:
    """The organisation's templates, each at its latest version."""
    return {"templates": await views.templates(pool, org)}


@router.put("/templates/{template_id}")
async def edit_template(
    template_id: uuid.UUID, cmd: TemplateIn, org: Organisation, uow: ContentUow
) -> dict[str, Any]:
    """Adds a version; campaigns already created keep the version they pinned."""
    version = await use_cases.edit_template(uow, template_id, cmd, org)
    return {"id": str(template_id), "version": version.version, **cmd.model_dump()}
