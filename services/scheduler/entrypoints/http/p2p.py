"""Peer to peer: a user starts sending a campaign, presses SEND per recipient, ends it. The
rules are the use cases' (campaigns/use_cases.py); here only their answers' shape."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from services.scheduler import domain
from services.scheduler.campaigns import use_cases, views
from services.scheduler.entrypoints.http.dependencies import Caller, Fanout, Pool, Settings, Uow
from services.scheduler.errors import Busy
from shared.http_input import After, BigId

router = APIRouter(tags=["peer to peer"])


@router.post("/campaigns/{campaign_id}/p2p/start")
async def start_sending(
    campaign_id: uuid.UUID, principal: Caller, uow: Uow, fanout: Fanout
) -> dict[str, Any]:
    """Start sending from this campaign. One campaign at a time per user: 409 names the
    campaign the user is already sending."""
    try:
        state = await use_cases.start_sending(uow, fanout, campaign_id, principal)
    except Busy as busy:
        raise HTTPException(409, {"message": str(busy),
                                  "active_campaign": str(busy.active_campaign)}) from busy
    return {"campaign_id": str(campaign_id), "state": state}


@router.get("/campaigns/{campaign_id}/p2p/recipients")
async def p2p_recipients(
    campaign_id: uuid.UUID,
    after: After = 0,
    limit: int = Query(100, ge=1, le=1000),
    *,
    principal: Caller,
    pool: Pool,
) -> dict[str, Any]:
    """The recipients to press SEND for, with whether SEND was pressed."""
    return await views.p2p_recipients(pool, campaign_id, principal.organisation_id, after,
                                      limit)


@router.post("/campaigns/{campaign_id}/recipients/{recipient_id}/send")
async def press_send(
    campaign_id: uuid.UUID, recipient_id: BigId, principal: Caller, uow: Uow, config: Settings
) -> dict[str, Any]:
    """SEND (or Enter) for one recipient: sends now, or queues it for the scheduled time."""
    return await use_cases.press_send(uow, campaign_id, recipient_id, principal,
                                      config.send_batch_size)


@router.post("/campaigns/{campaign_id}/end")
async def end_campaign(
    campaign_id: uuid.UUID, cmd: domain.EndCampaign, principal: Caller, uow: Uow,
    fanout: Fanout, pool: Pool,
) -> dict[str, Any]:
    """End Campaign: needs {"confirmation": "END"}; the campaign moves to Completed."""
    # `cmd` was checked on the way in: the typed word END.
    await use_cases.end(uow, fanout, campaign_id, principal)
    return await views.campaign(pool, campaign_id, principal.organisation_id)
