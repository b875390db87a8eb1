"""Voters and lists of the caller's organisation, the lists a campaign targets, and the voter
page's "send email / SMS". Another organisation's voter or list is "not found"."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Query, Request, Response, status

from services.scheduler import domain as campaigns_domain
from services.scheduler.campaigns import use_cases as campaign_use_cases
from services.scheduler.campaigns import views as campaign_views
from services.scheduler.entrypoints.http.dependencies import (
    Caller,
    Fanout,
    Organisation,
    Pool,
    Region,
    Uow,
)
from services.scheduler.voters import domain, service
from services.scheduler.voters.views import (
    export_view,
    list_view,
    lists_view,
    page_view,
    voter_page_view,
    voter_view,
)
from shared.http_input import After, BigId

router = APIRouter(tags=["voters"])
_CSV_BODY = {"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}}

# --- voters ---------------------------------------------------------------------------------


@router.post("/voters/{voter_id}/send", status_code=202)
async def send_to_voter(
    voter_id: BigId, cmd: campaigns_domain.SendToVoter, principal: Caller, uow: Uow,
    fanout: Fanout, pool: Pool, region: Region,
) -> dict[str, Any]:
    """The voter's page action "send email / SMS": an individual send with the chosen
    sender and template, rendered with the voter's attributes."""
    campaign_id = await campaign_use_cases.send_to_voter(uow, fanout, voter_id, cmd, principal,
                                                         region)
    return await campaign_views.campaign(pool, campaign_id, principal.organisation_id)


@router.post("/voters", status_code=status.HTTP_201_CREATED)
async def create_voter(
    *, org: Organisation, cmd: domain.VoterIn, pool: Pool, region: Region
) -> dict[str, Any]:
    return voter_view(await service.create_voter(pool, cmd, org=org, region=region))


@router.post("/voters.csv", openapi_extra=_CSV_BODY)
async def import_voters(
    *, org: Organisation, request: Request, pool: Pool, region: Region
) -> dict[str, Any]:
    """Body: CSV with a header naming external_id, email and/or phone, optionally first_name,
    last_name, preferred_language; any other column is an attribute. Streamed; upserts by
    external_id, else email, else phone. Good rows are kept, bad rows listed."""
    result = await service.import_csv(pool, request.stream(), org=org, region=region)
    return result.view()


@router.get("/voters")
async def search_voters(
    *,
    org: Organisation,
    q: str | None = Query(None, max_length=200,
                          description="substring of name, email or phone"),
    after: After = 0,
    limit: int = Query(50, ge=1, le=500),
    pool: Pool,
) -> dict[str, Any]:
    rows = await service.search_voters(pool, q, org=org, after=after, limit=limit)
    return page_view(rows, limit)


@router.get("/voters/{voter_id}")
async def voter_page(*, org: Organisation, voter_id: BigId, pool: Pool) -> dict[str, Any]:
    """The voter's page: details, opt-out state, lists, and the campaigns they were part
    of. Each campaign's per-channel status and reason come from the tracker:
    `GET /voters/{voter_id}/history` there (the scheduler does not hold send statuses)."""
    return voter_page_view(voter_id, await service.voter_page(pool, voter_id, org=org))


@router.patch("/voters/{voter_id}")
async def edit_voter(
    voter_id: BigId, cmd: domain.EditVoter, org: Organisation, pool: Pool, region: Region
) -> dict[str, Any]:
    return voter_view(await service.edit_voter(pool, voter_id, cmd, org=org, region=region))


@router.delete("/voters/{voter_id}")
async def delete_voter(
    *,
    org: Organisation,
    voter_id: BigId,
    erase: bool = Query(False, description="also blank the voter's personal data in the "
                                           "recipient copies campaigns hold"),
    pool: Pool,
) -> dict[str, Any]:
    return await service.delete_voter(pool, voter_id, org=org, erase=erase)


@router.get("/voters/{voter_id}/export")
async def export_voter(*, org: Organisation, voter_id: BigId, pool: Pool) -> dict[str, Any]:
    """Everything the scheduler holds on the voter, recipient copies in campaigns included."""
    return export_view(await service.voter_export(pool, voter_id, org=org))


# --- lists ----------------------------------------------------------------------------------


@router.post("/lists", status_code=status.HTTP_201_CREATED)
async def create_list(*, org: Organisation, cmd: domain.CreateList, pool: Pool) -> dict[str, Any]:
    return list_view(await service.create_list(pool, cmd, org=org))


@router.get("/lists")
async def all_lists(org: Organisation, pool: Pool) -> dict[str, Any]:
    return lists_view(await service.all_lists(pool, org=org))


@router.get("/lists/{list_id}")
async def get_list(*, org: Organisation, list_id: uuid.UUID, pool: Pool) -> dict[str, Any]:
    return list_view(await service.get_list(pool, list_id, org=org))


@router.delete("/lists/{list_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_list(*, org: Organisation, list_id: uuid.UUID, pool: Pool) -> Response:
    await service.delete_list(pool, list_id, org=org)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/lists/{list_id}/voters")
async def list_members(
    *,
    org: Organisation,
    list_id: uuid.UUID,
    after: After = 0,
    limit: int = Query(50, ge=1, le=500),
    pool: Pool,
) -> dict[str, Any]:
    rows = await service.members_page(pool, list_id, org=org, after=after, limit=limit)
    return page_view(rows, limit)


@router.post("/lists/{list_id}/voters")
async def add_to_list(
    list_id: uuid.UUID, cmd: domain.VoterIds, org: Organisation, pool: Pool
) -> dict[str, Any]:
    return {"added": await service.change_members(pool, list_id, cmd, org=org, add=True)}


@router.post("/lists/{list_id}/voters/remove")
async def remove_from_list(
    list_id: uuid.UUID, cmd: domain.VoterIds, org: Organisation, pool: Pool
) -> dict[str, Any]:
    return {"removed": await service.change_members(pool, list_id, cmd, org=org, add=False)}


@router.post("/lists/{list_id}/voters.csv", openapi_extra=_CSV_BODY)
async def import_into_list(
    list_id: uuid.UUID, request: Request, org: Organisation, pool: Pool, region: Region
) -> dict[str, Any]:
    """As `POST /voters.csv`, and every good row's voter joins the list."""
    result = await service.import_csv(
        pool, request.stream(), org=org, region=region, list_id=list_id
    )
    return result.view()


# --- campaigns targeting lists --------------------------------------------------------------


@router.post("/campaigns/{campaign_id}/lists", status_code=status.HTTP_201_CREATED)
async def target_lists(
    campaign_id: uuid.UUID, cmd: domain.TargetLists, org: Organisation, pool: Pool
) -> dict[str, Any]:
    """A draft campaign sends to these lists' voters too, each voter once; they are copied
    into its recipients when it starts sending."""
    return lists_view(await service.target_lists(pool, campaign_id, cmd, org=org))


@router.get("/campaigns/{campaign_id}/lists")
async def campaign_lists(campaign_id: uuid.UUID, org: Organisation, pool: Pool) -> dict[str, Any]:
    return lists_view(await service.lists_of_campaign(pool, campaign_id, org=org))


@router.delete("/campaigns/{campaign_id}/lists/{list_id}",
               status_code=status.HTTP_204_NO_CONTENT)
async def untarget_list(
    campaign_id: uuid.UUID, list_id: uuid.UUID, org: Organisation, pool: Pool
) -> Response:
    await service.untarget_list(pool, campaign_id, list_id, org=org)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
