"""Voter directory benchmark: CSV import rate and search latency.

    .venv/bin/python -m bench.voters_bench [--voters 100000] [--queries 50]

Uses DATABASE_URL (else the local stack's `.sendout/stack.env`; `./sendout stack` starts it).
Everything happens in a throwaway schema with the scheduler's migrations, dropped at the end.
It measures the import as the HTTP route runs it (the body streamed in 64 KiB chunks, parsed
and validated, COPY + upsert in batches), then the p50 of searches typed as people type them
(part of an email, a phone with spaces, a family name) with the trigram index, and again
without it, to show what the index buys. A text_pattern_ops btree is not measured: it serves
only prefixes of one column, not "any part of name, email or phone".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

import asyncpg

from services.scheduler import app as scheduler_app
from services.scheduler import repo as scheduler_repo
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.campaigns import use_cases as scheduler_use_cases
from services.scheduler.domain import CreateCampaign
from services.scheduler.voters import repo as voters_repo
from services.scheduler.voters import service
from services.scheduler.voters.domain import DEFAULT_ORG
from shared import db
from shared.auth import Principal
from tests.factories import campaign_payload
from tests.voter_factories import chunked, phone, run_tag, voters_csv

ROOT = Path(__file__).resolve().parent.parent


def _database_url() -> str:
    if url := os.environ.get("DATABASE_URL"):
        return url
    env = ROOT / ".sendout" / "stack.env"
    for line in env.read_text().splitlines() if env.exists() else []:
        if line.startswith("DATABASE_URL="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("no DATABASE_URL and no local stack: run ./sendout stack first")


KINDS = ("email", "phone", "family name")


def _queries(tag: str, voters: int, count: int) -> list[tuple[str, str]]:
    """(kind, query): part of one email (1 match), a phone as typed (1 match per bench run),
    a family name shared by 1 voter in 50 (a page of 50 out of 2% of the voters)."""
    step = max(1, voters // count)
    out: list[tuple[str, str]] = []
    for n, i in enumerate(range(0, voters, step)):
        digits = phone(i)[3:]
        kind = KINDS[n % 3]
        q = {"email": f"{tag}.v{i}@", "phone": f"{digits[:4]} {digits[4:]}",
             "family name": f"{tag}family{i % 50}"}[kind]
        out.append((kind, q))
    return out[:count]


async def _search(pool: asyncpg.Pool, queries: list[tuple[str, str]]) -> str:
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for kind, q in queries:
        started = time.perf_counter()
        await service.search_voters(pool, q, org=DEFAULT_ORG, after=0, limit=50)
        latencies[kind].append((time.perf_counter() - started) * 1000)
    every = [ms for kind in KINDS for ms in latencies[kind]]
    by_kind = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in latencies.items() if v)
    return (f"p50 {statistics.median(every):.1f} ms, max {max(every):.1f} ms "
            f"(p50 by kind, ms: {by_kind})")


async def _snapshot_seconds(pool: asyncpg.Pool) -> float:
    """What the directory adds to "send out now": copying a list's voters into recipients."""
    async with pool.acquire() as conn:
        list_id = uuid.uuid4()
        await voters_repo.insert_list(conn, DEFAULT_ORG, list_id, "everyone")
        await conn.execute("INSERT INTO list_members (list_id, voter_id) SELECT $1, id FROM voters",
                           list_id)
    campaign_id = await scheduler_use_cases.create_campaign(
        AsyncpgUnitOfWork(pool), CreateCampaign(**campaign_payload()),
        actor=Principal(uuid.uuid4(), DEFAULT_ORG, "bench")
    )
    async with pool.acquire() as conn:
        await voters_repo.target_lists(conn, campaign_id, [list_id])
        started = time.perf_counter()
        async with conn.transaction():
            await voters_repo.snapshot_lists_into_recipients(conn, campaign_id)
        return time.perf_counter() - started


async def main(voters: int, queries: int) -> None:
    schema = f"bench_voters_{uuid.uuid4().hex[:8]}"
    pool = await db.create_pool(_database_url(), schema, max_size=4,
                                init=scheduler_repo.init_connection)
    try:
        await db.migrate(pool, schema, scheduler_app.MIGRATIONS)
        tag = run_tag()
        data, _ = voters_csv(tag, voters)
        started = time.perf_counter()
        result = await service.import_csv(pool, chunked(data), org=DEFAULT_ORG, region="DK")
        seconds = time.perf_counter() - started
        assert result.inserted == voters, result.view()
        print(f"import: {voters:,} voters ({len(data) / 1e6:.1f} MB CSV) in {seconds:.1f} s "
              f"= {voters / seconds:,.0f} voters/s")
        async with pool.acquire() as conn:
            await conn.execute("ANALYZE voters")
        qs = _queries(tag, voters, queries)
        await _search(pool, qs[:6])  # warm the cache and the connections
        print(f"search, trigram GIN index, {len(qs)} queries at {voters:,} voters: "
              f"{await _search(pool, qs)}")
        async with pool.acquire() as conn:
            await conn.execute("DROP INDEX voters_search_trgm")
        print(f"search, no index (for comparison): {await _search(pool, qs)}")
        print(f"send-now snapshot of one {voters:,}-voter list into recipients: "
              f"{await _snapshot_seconds(pool):.1f} s")
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voters", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.voters, args.queries))
