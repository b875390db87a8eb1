"""The recipient report of a 100,000-recipient campaign streams: the tracker's memory stays
flat while it is downloaded. The outcome rows are written straight into the tracker's table
(sending 100,000 messages would test the send path, not the report)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from devtools.processes import Sendout
from services.scheduler.voters.domain import DEFAULT_ORG
from tests.conftest import Stack

pytestmark = pytest.mark.e2e
N = 100_000
MAX_GROWTH_MB = 50


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


async def _insert_outcomes(dsn: str, cid: uuid.UUID) -> None:
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            # The operator's organisation ("default"): the report is answered only to it.
            await conn.execute("INSERT INTO tracker.campaigns "
                               "(campaign_id, state, started, organisation_id) "
                               "VALUES ($1, 'completed', true, $2)", cid, DEFAULT_ORG)
            await conn.copy_records_to_table(
                "recipient_outcomes", schema_name="tracker",
                columns=["campaign_id", "recipient_id", "channel", "status", "reason",
                         "provider_message_id", "event_id", "occurred_at", "address",
                         "delivery", "delivery_reason", "delivered_at"],
                records=(
                    (cid, i, "sms", "completed", None, f"mem-{cid}-{i}", uuid.uuid4(), now,
                     f"+4520{i:06d}",
                     "not_delivered" if i % 10 == 0 else "delivered",
                     "unreachable handset" if i % 10 == 0 else None, now)
                    for i in range(N)
                ),
            )
    finally:
        await conn.close()


async def _delete(dsn: str, cid: uuid.UUID) -> None:
    # The local database outlives runs: leave no 100,000 rows behind.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM tracker.recipient_outcomes WHERE campaign_id = $1", cid)
        await conn.execute("DELETE FROM tracker.campaigns WHERE campaign_id = $1", cid)
    finally:
        await conn.close()


def test_report_of_100k_recipients_streams_with_flat_tracker_memory(
    sendout: Sendout, stack: Stack
) -> None:
    cid = uuid.uuid4()
    asyncio.run(_insert_outcomes(stack.database_url, cid))
    pid = sendout.processes.by_name("tracker").popen.pid
    try:
        # Reset the peak (VmHWM) so it measures this download only; sampling RSS as well
        # covers kernels that do not allow the reset.
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            hwm_reset = True
        except OSError:
            hwm_reset = False
        before = _status_kb(pid, "VmRSS")
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                peak[0] = max(peak[0], _status_kb(pid, "VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        lines = size = 0
        try:
            with httpx.stream("GET", f"{sendout.tracker}/campaigns/{cid}/report.csv",
                              headers=sendout.auth, timeout=120) as r:
                assert r.status_code == 200
                for chunk in r.iter_bytes():
                    lines += chunk.count(b"\n")
                    size += len(chunk)
        finally:
            done.set()
            sampler.join()
        after = _status_kb(pid, "VmRSS")
        # Without the reset VmHWM may be an earlier test's peak: then the samples only.
        hwm = _status_kb(pid, "VmHWM") if hwm_reset else peak[0]
    finally:
        asyncio.run(_delete(stack.database_url, cid))
    assert lines == N + 1  # and the header
    growth_mb = (max(peak[0], hwm, after) - before) / 1024
    print(f"\nreport of {N:,} rows ({size / 1e6:.1f} MB): tracker RSS {before / 1024:.1f} MB "
          f"before, {after / 1024:.1f} MB after, peak {max(peak[0], hwm) / 1024:.1f} MB "
          f"(VmHWM {hwm / 1024:.1f}); growth {growth_mb:.1f} MB")
    assert growth_mb < MAX_GROWTH_MB
