"""Senders: who a campaign's messages come from, per organisation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from services.scheduler.content import use_cases, views
from services.scheduler.content.model import SenderIn
from services.scheduler.entrypoints.http.dependencies import ContentUow, Organisation, Pool

router = APIRouter(tags=["senders"])


@router.post("/senders", status_code=status.HTTP_201_CREATED)
async def create_sender(cmd: SenderIn, org: Organisation, uow: ContentUow) -> dict[str, Any]:
    sender = await use_cases.create_sender(uow, cmd, org)
    return {"id": str(sender.id), **cmd.model_dump()}


@router.get("/senders")
async def list_senders(org: Organisation, pool: Pool) -> dict[str, Any]:
    return {"senders": await views.senders(pool, org)}
