"""The recipient report: one CSV row per recipient and channel, streamed."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg

from services.tracker import report_repo
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


async def csv_chunks(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The report's CSV, header first, in chunks of `_CHUNK_ROWS` rows (the route:
    entrypoints/http/report.py)."""
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
