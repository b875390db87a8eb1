"""The recipient report: one CSV row per recipient and channel, streamed."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from services.tracker import identity, report_repo
from shared.auth import Principal
from shared.text import spreadsheet_safe

# Rows per chunk written to the response: big enough to keep per-chunk overhead low, small
# enough that memory stays flat whatever the campaign's size.
_CHUNK_ROWS = 1000


def _cell(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        # Addresses and providers' reasons come from outside: none may become a formula.
        return spreadsheet_safe(value)
    return "" if value is None else value


async def _csv_chunks(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(report_repo.COLUMNS)
    rows = 0
    # The connection is held for the whole download: the cursor reads as the client reads.
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        async for row in report_repo.report_rows(conn, campaign_id):
            writer.writerow([_cell(v) for v in row.values()])
            rows += 1
            if rows % _CHUNK_ROWS == 0:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue().encode()


def http_router(pool: asyncpg.Pool, user: Any) -> APIRouter:
    router = APIRouter(prefix="/campaigns", tags=["progress"])

    @router.get("/{campaign_id}/report.csv", response_class=StreamingResponse)
    async def report(campaign_id: uuid.UUID, principal: Principal = user) -> StreamingResponse:
        """The recipient report: per recipient and channel its address, when it was processed,
        its status and reason, the provider's message id, and delivered / not delivered with
        the provider's reason (empty until the receipt arrives).

        Only settled recipients are listed: the tracker learns of a recipient from its outcome,
        so recipients still pending are not in the report yet.
        """
        async with pool.acquire() as conn:
            if not await identity.campaign_is_theirs(conn, campaign_id, principal):
                raise HTTPException(404, f"no progress for campaign {campaign_id}: not started")
        return StreamingResponse(
            _csv_chunks(pool, campaign_id),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{campaign_id}-report.csv"'},
        )

    return router
