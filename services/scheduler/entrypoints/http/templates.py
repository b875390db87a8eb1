"""Templates: versioned; a campaign pins the version it was created with."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, status

from services.scheduler import domain, service
from services.scheduler.campaigns import views
from services.scheduler.entrypoints.http.dependencies import Organisation, Pool

router = APIRouter(tags=["templates"])


@router.post("/templates", status_code=status.HTTP_201_CREATED)
async def create_template(
    cmd: domain.TemplateIn, org: Organisation, pool: Pool
) -> dict[str, Any]:
    version = await service.create_template(pool, cmd, org)
    return {"id": str(version.template_id), "version": version.version, **cmd.model_dump()}


@router.get("/templates")
async def list_templates(org: Organisation, pool: Pool) -> dict[str, Any]:
    """The organisation's templates, each at its latest version."""
    return {"templates": await views.templates(pool, org)}


@router.put("/templates/{template_id}")
async def edit_template(
    template_id: uuid.UUID, cmd: domain.TemplateIn, org: Organisation, pool: Pool
) -> dict[str, Any]:
    """Adds a version; campaigns already created keep the version they pinned."""
    version = await service.edit_template(pool, template_id, cmd, org)
    return {"id": str(template_id), "version": version.version, **cmd.model_dump()}
