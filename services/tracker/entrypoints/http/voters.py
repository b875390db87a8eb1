"""Voters: what each campaign did for one voter of the directory."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from services.tracker import voters_repo
from services.tracker.entrypoints.http.dependencies import Caller, Pool
from shared.http_input import BigId

router = APIRouter(prefix="/voters", tags=["voters"])


@router.get("/{voter_id}/history")
async def voter_history(
    voter_id: BigId, principal: Caller, pool: Pool, limit: int = Query(200, ge=1, le=1000)
) -> dict[str, Any]:
    """Per campaign and channel: the recipient status (completed, failed, skipped) and its
    reason. A voter the tracker has no outcome for yet has an empty history, not a 404:
    the tracker does not know the directory. Only the caller's organisation's campaigns
    are listed."""
    async with pool.acquire() as conn:
        rows = await voters_repo.voter_history(
            conn, voter_id, principal.organisation_id, limit=limit)
    return {"voter_id": voter_id, "history": rows}
