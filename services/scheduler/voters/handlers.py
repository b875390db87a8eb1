"""Voter directory HTTP routes: voters, lists, the lists a campaign targets, a voter's page."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Query, Request, Response, status

from services.scheduler.voters import domain, service
from shared.auth import Principal
from shared.http_input import After, BigId

_CSV_BODY = {"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def voter_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "external_id": row["external_id"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "email": row["email"],
        "phone": row["phone"],
        "preferred_language": row["preferred_language"],
        "attributes": row["attributes"],
        "opted_out": row["opted_out"],
        "opted_out_at": _iso(row["opted_out_at"]),
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def list_view(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": str(row["id"]), "name": row["name"], "voters": row["voters"],
            "created_at": _iso(row["created_at"])}


def _page(rows: list[asyncpg.Record], limit: int) -> dict[str, Any]:
    return {
        "voters": [voter_view(r) for r in rows],
        "next_after": rows[-1]["id"] if len(rows) == limit else None,
    }


def http_router(pool: asyncpg.Pool, phone_region: str, user: Any) -> APIRouter:
    """Voters and lists of the caller's organisation (`user`: the dependency giving the
    caller); another organisation's voter or list is "not found"."""
    router = APIRouter(tags=["voters"])

    def organisation(principal: Principal = user) -> uuid.UUID:
        return principal.organisation_id

    caller_org = Depends(organisation)

    # --- voters -----------------------------------------------------------------------------

    @router.post("/voters", status_code=status.HTTP_201_CREATED)
    async def create_voter(*, org: uuid.UUID = caller_org, cmd: domain.VoterIn) -> dict[str, Any]:
        return voter_view(await service.create_voter(pool, cmd, org=org, region=phone_region))

    @router.post("/voters.csv", openapi_extra=_CSV_BODY)
    async def import_voters(*, org: uuid.UUID = caller_org, request: Request) -> dict[str, Any]:
        """Body: CSV with a header naming external_id, email and/or phone, optionally first_name,
        last_name, preferred_language; any other column is an attribute. Streamed; upserts by
        external_id, else email, else phone. Good rows are kept, bad rows listed."""
        result = await service.import_csv(pool, request.stream(), org=org, region=phone_region)
        return result.view()

    @router.get("/voters")
    async def search_voters(
        *,
        org: uuid.UUID = caller_org,
        q: str | None = Query(None, max_length=200,
                              description="substring of name, email or phone"),
        after: After = 0,
        limit: int = Query(50, ge=1, le=500),
    ) -> dict[str, Any]:
        rows = await service.search_voters(pool, q, org=org, after=after, limit=limit)
        return _page(rows, limit)

    @router.get("/voters/{voter_id}")
    async def voter_page(*, org: uuid.UUID = caller_org, voter_id: BigId) -> dict[str, Any]:
        """The voter's page: details, opt-out state, lists, and the campaigns they were part
        of. Each campaign's per-channel status and reason come from the tracker:
        `GET /voters/{voter_id}/history` there (the scheduler does not hold send statuses)."""
        page = await service.voter_page(pool, voter_id, org=org)
        return {
            **voter_view(page["voter"]),
            "lists": page["lists"],
            "campaigns": [
                {"campaign_id": str(c["campaign_id"]), "name": c["name"], "state": c["state"],
                 "recipient_id": c["recipient_id"], "started_at": _iso(c["started_at"]),
                 "completed_at": _iso(c["completed_at"])}
                for c in page["campaigns"]
            ],
            "statuses": {"service": "tracker", "path": f"/voters/{voter_id}/history"},
        }

    @router.patch("/voters/{voter_id}")
    async def edit_voter(
        voter_id: BigId, cmd: domain.EditVoter, org: uuid.UUID = caller_org
    ) -> dict[str, Any]:
        row = await service.edit_voter(pool, voter_id, cmd, org=org, region=phone_region)
        return voter_view(row)

    @router.delete("/voters/{voter_id}")
    async def delete_voter(
        *,
        org: uuid.UUID = caller_org,
        voter_id: BigId,
        erase: bool = Query(False, description="also blank the voter's personal data in the "
                                               "recipient copies campaigns hold"),
    ) -> dict[str, Any]:
        return await service.delete_voter(pool, voter_id, org=org, erase=erase)

    @router.get("/voters/{voter_id}/export")
    async def export_voter(*, org: uuid.UUID = caller_org, voter_id: BigId) -> dict[str, Any]:
        """Everything the scheduler holds on the voter, recipient copies in campaigns included."""
        data = await service.voter_export(pool, voter_id, org=org)
        return {
            "voter": voter_view(data["voter"]),
            "lists": data["lists"],
            "recipient_snapshots": [
                {**dict(s), "campaign_id": str(s["campaign_id"])}
                for s in data["recipient_snapshots"]
            ],
        }

    # --- lists ------------------------------------------------------------------------------

    @router.post("/lists", status_code=status.HTTP_201_CREATED)
    async def create_list(*, org: uuid.UUID = caller_org, cmd: domain.CreateList) -> dict[str, Any]:
        return list_view(await service.create_list(pool, cmd, org=org))

    @router.get("/lists")
    async def all_lists(org: uuid.UUID = caller_org) -> dict[str, Any]:
        return {"lists": [list_view(r) for r in await service.all_lists(pool, org=org)]}

    @router.get("/lists/{list_id}")
    async def get_list(*, org: uuid.UUID = caller_org, list_id: uuid.UUID) -> dict[str, Any]:
        return list_view(await service.get_list(pool, list_id, org=org))

    @router.delete("/lists/{list_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def delete_list(*, org: uuid.UUID = caller_org, list_id: uuid.UUID) -> Response:
        await service.delete_list(pool, list_id, org=org)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/lists/{list_id}/voters")
    async def list_members(
        *,
        org: uuid.UUID = caller_org,
        list_id: uuid.UUID,
        after: After = 0,
        limit: int = Query(50, ge=1, le=500),
    ) -> dict[str, Any]:
        rows = await service.members_page(pool, list_id, org=org, after=after, limit=limit)
        return _page(rows, limit)

    @router.post("/lists/{list_id}/voters")
    async def add_to_list(
        list_id: uuid.UUID, cmd: domain.VoterIds, org: uuid.UUID = caller_org
    ) -> dict[str, Any]:
        return {"added": await service.change_members(pool, list_id, cmd, org=org, add=True)}

    @router.post("/lists/{list_id}/voters/remove")
    async def remove_from_list(
        list_id: uuid.UUID, cmd: domain.VoterIds, org: uuid.UUID = caller_org
    ) -> dict[str, Any]:
        return {"removed": await service.change_members(pool, list_id, cmd, org=org, add=False)}

    @router.post("/lists/{list_id}/voters.csv", openapi_extra=_CSV_BODY)
    async def import_into_list(
        list_id: uuid.UUID, request: Request, org: uuid.UUID = caller_org
    ) -> dict[str, Any]:
        """As `POST /voters.csv`, and every good row's voter joins the list."""
        result = await service.import_csv(
            pool, request.stream(), org=org, region=phone_region, list_id=list_id
        )
        return result.view()

    # --- campaigns targeting lists ----------------------------------------------------------

    @router.post("/campaigns/{campaign_id}/lists", status_code=status.HTTP_201_CREATED)
    async def target_lists(
        campaign_id: uuid.UUID, cmd: domain.TargetLists, org: uuid.UUID = caller_org
    ) -> dict[str, Any]:
        """A draft campaign sends to these lists' voters too, each voter once; they are copied
        into its recipients when it starts sending."""
        rows = await service.target_lists(pool, campaign_id, cmd, org=org)
        return {"lists": [list_view(r) for r in rows]}

    @router.get("/campaigns/{campaign_id}/lists")
    async def campaign_lists(
        campaign_id: uuid.UUID, org: uuid.UUID = caller_org
    ) -> dict[str, Any]:
        rows = await service.lists_of_campaign(pool, campaign_id, org=org)
        return {"lists": [list_view(r) for r in rows]}

    @router.delete("/campaigns/{campaign_id}/lists/{list_id}",
                   status_code=status.HTTP_204_NO_CONTENT)
    async def untarget_list(
        campaign_id: uuid.UUID, list_id: uuid.UUID, org: uuid.UUID = caller_org
    ) -> Response:
        await service.untarget_list(pool, campaign_id, list_id, org=org)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
