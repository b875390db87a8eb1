"""Campaigns: create, fill with recipients, send out now, schedule, cancel, abort; individual
sends. The answer is read (campaigns/views.py) once the use case committed. Every route acts
within the caller's organisation: another organisation's campaign is "not found" (404), so its
existence does not leak."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, status

from services.scheduler import domain
from services.scheduler.campaigns import use_cases, views
from services.scheduler.entrypoints.http.dependencies import (
    Caller,
    Fanout,
    Pool,
    Region,
    Running,
    Uow,
)

router = APIRouter(tags=["campaigns"])
_CSV_BODY = {"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}}


@router.post("/campaigns", status_code=status.HTTP_201_CREATED)
async def create_campaign(
    cmd: domain.CreateCampaign, principal: Caller, uow: Uow, pool: Pool
) -> dict[str, Any]:
    """The campaign belongs to the caller's organisation."""
    campaign_id = await use_cases.create_campaign(uow, cmd, principal)
    return await views.campaign(pool, campaign_id, principal.organisation_id)


@router.get("/campaigns/{campaign_id}")
async def get_campaign(campaign_id: uuid.UUID, principal: Caller, pool: Pool) -> dict[str, Any]:
    return await views.campaign(pool, campaign_id, principal.organisation_id)


@router.post("/campaigns/{campaign_id}/recipients", status_code=201)
async def add_recipients(
    campaign_id: uuid.UUID, cmd: domain.AddRecipients, principal: Caller, uow: Uow,
    region: Region,
) -> dict[str, Any]:
    added = await use_cases.add_recipients(uow, campaign_id, cmd.recipients, region, principal)
    return {"added": added}


@router.post("/campaigns/{campaign_id}/recipients.csv", status_code=status.HTTP_201_CREATED,
             openapi_extra=_CSV_BODY)
async def upload_recipients_csv(
    campaign_id: uuid.UUID, request: Request, principal: Caller, uow: Uow, pool: Pool,
    region: Region,
) -> domain.CsvAdded:
    """Body: CSV with a header (email, phone, first_name, last_name, any attribute...).
    Streamed (at most 200 MiB), parsed as it arrives. Good rows are added; a row with an
    invalid email or phone, an unstorable field or more fields than the header is refused:
    `rejected` counts them, `errors` lists them by line (the first 100). 422 if no row is
    good. Encoding (UTF-8 with or without BOM, UTF-16, Windows-1252) and separator (comma,
    semicolon, tab) are detected and said in `detected`."""
    # 404 before reading a body meant for nobody.
    await views.campaign(pool, campaign_id, principal.organisation_id)
    return await use_cases.add_recipients_csv(
        uow, campaign_id, request.stream(), region, principal)


@router.post("/campaigns/{campaign_id}/send-now", status_code=202)
async def send_now(
    campaign_id: uuid.UUID, principal: Caller, uow: Uow, fanout: Fanout, pool: Pool
) -> dict[str, Any]:
    await use_cases.send_now(uow, fanout, campaign_id, principal)
    return await views.campaign(pool, campaign_id, principal.organisation_id)


@router.post("/campaigns/{campaign_id}/schedule", status_code=202)
async def schedule(
    campaign_id: uuid.UUID, cmd: domain.ScheduleCampaign, principal: Caller, uow: Uow,
    pool: Pool,
) -> dict[str, Any]:
    await use_cases.schedule(uow, campaign_id, cmd.at, principal)
    return await views.campaign(pool, campaign_id, principal.organisation_id)


@router.post("/campaigns/{campaign_id}/cancel")
async def cancel(campaign_id: uuid.UUID, principal: Caller, uow: Uow, pool: Pool) -> dict[str, Any]:
    """Cancel a schedule before its time: nothing is sent; the campaign is a draft again."""
    await use_cases.cancel(uow, campaign_id, principal)
    return await views.campaign(pool, campaign_id, principal.organisation_id)


@router.post("/campaigns/{campaign_id}/abort", status_code=202)
async def abort(
    campaign_id: uuid.UUID, principal: Caller, uow: Uow, scheduler: Running
) -> dict[str, Any]:
    """Answers once no provider call for the campaign can start any more."""
    result = await use_cases.abort(
        uow, campaign_id, principal, acks=scheduler.acks,
        list_dispatchers=scheduler.list_dispatchers,
        wait_seconds=scheduler.settings.abort_ack_timeout_seconds,
    )
    campaign = await views.campaign(scheduler.pool, campaign_id, principal.organisation_id)
    return {**campaign, "abort": result}


@router.get("/campaigns/{campaign_id}/audit")
async def audit(campaign_id: uuid.UUID, principal: Caller, pool: Pool) -> dict[str, Any]:
    return {"events": await views.audit_trail(pool, campaign_id, principal.organisation_id)}


@router.post("/individual-sends", status_code=202)
async def send_individually(
    cmd: domain.SendIndividually, principal: Caller, uow: Uow, fanout: Fanout, pool: Pool,
    region: Region,
) -> dict[str, Any]:
    """Send one recipient an email and/or SMS: a one-recipient campaign, sent now."""
    campaign_id = await use_cases.send_individually(uow, fanout, cmd, principal, region)
    return await views.campaign(pool, campaign_id, principal.organisation_id)


@router.get("/campaigns")
async def list_campaigns(
    principal: Caller, pool: Pool, state: str | None = None
) -> dict[str, Any]:
    """The organisation's campaigns, e.g. `?state=completed` for Completed Campaigns."""
    return {"campaigns": await views.campaigns(pool, principal.organisation_id, state)}
