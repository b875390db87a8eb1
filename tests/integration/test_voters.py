"""The voter directory on real PostgreSQL: streamed CSV import and upsert, search, lists
snapshotted into campaigns, deletion and erasure."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from services.scheduler import app as scheduler_app
from services.scheduler import domain as scheduler_domain
from services.scheduler import repo as scheduler_repo
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.campaigns import use_cases
from services.scheduler.domain import Invalid, InvalidTransition, NotFound
from services.scheduler.voters import domain, repo, service
from services.scheduler.voters.service import ImportResult
from shared import db
from shared.auth import Principal
from tests.conftest import Stack
from tests.factories import campaign_payload
from tests.voter_factories import chunked, phone, run_tag, voter_payload, voters_csv

pytestmark = pytest.mark.integration
REGION = "DK"
# An organisation of this run's own: voters that earlier runs left in the local database
# (in other organisations) cannot show up in its searches.
ORG = uuid.uuid4()
ACTOR = Principal(uuid.uuid4(), ORG, "test")


@pytest.fixture(scope="session")
async def scheduler_pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(stack.database_url, "scheduler", max_size=4,
                                init=scheduler_repo.init_connection)
    await db.migrate(pool, "scheduler", scheduler_app.MIGRATIONS)
    await pool.execute("INSERT INTO organisations (id, name) VALUES ($1, $2)",
                       ORG, f"voters-tests-{ORG}")
    yield pool
    await pool.close()


async def _import(
    pool: asyncpg.Pool, data: bytes, list_id: uuid.UUID | None = None
) -> ImportResult:
    return await service.import_csv(pool, chunked(data), org=ORG, region=REGION, list_id=list_id)


async def _new_list(pool: asyncpg.Pool, name: str) -> uuid.UUID:
    row = await service.create_list(pool, domain.CreateList(name=name), org=ORG)
    return uuid.UUID(str(row["id"]))


async def _voter_ids(pool: asyncpg.Pool, tag: str) -> dict[str, int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT external_id, id FROM voters WHERE external_id LIKE $1 || '-%'", tag
        )
    return {r["external_id"]: r["id"] for r in rows}


async def _draft_campaign(pool: asyncpg.Pool) -> uuid.UUID:
    return await use_cases.create_campaign(
        AsyncpgUnitOfWork(pool), scheduler_domain.CreateCampaign(**campaign_payload()), actor=ACTOR
    )


async def _send_now(pool: asyncpg.Pool, cid: uuid.UUID) -> int:
    """The send-now transaction of POST /campaigns/{id}/send-now; returns the total.

    The fan-out is not under test here: it is marked done in the same transaction, so that a
    scheduler process running meanwhile (the e2e tests') does not send this campaign.
    """
    async with pool.acquire() as conn, conn.transaction():
        state = await scheduler_repo.lock_campaign_state(conn, cid)
        assert state is not None
        scheduler_domain.ensure_can_send_now(cid, state)
        await repo.snapshot_lists_into_recipients(conn, cid)
        await scheduler_repo.start_sending(conn, cid)
        await conn.execute("UPDATE campaigns SET fanout_done = true WHERE id = $1", cid)
        return int(await conn.fetchval("SELECT total FROM campaigns WHERE id = $1", cid))


async def _end(pool: asyncpg.Pool, cid: uuid.UUID, state: str = "completed") -> None:
    """The campaign ends (as the tracker's completed event or an abort would make it)."""
    async with pool.acquire() as conn:
        await conn.execute("UPDATE campaigns SET state = $2 WHERE id = $1", cid, state)


async def _recipients(pool: asyncpg.Pool, cid: uuid.UUID) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch(
            """
            SELECT id, voter_id, voter_deleted, erase_pending, email, phone, first_name,
                   last_name, attributes
            FROM recipients WHERE campaign_id = $1 ORDER BY id
            """,
            cid,
        )


async def _recipient_dicts(pool: asyncpg.Pool, cid: uuid.UUID) -> list[dict[str, object]]:
    return [dict(r) for r in await _recipients(pool, cid)]


@dataclass(frozen=True)
class Imported:
    tag: str
    result: ImportResult
    bad: dict[int, str]
    seconds: float


@pytest.fixture(scope="module")
async def hundred_thousand(scheduler_pool: asyncpg.Pool) -> AsyncIterator[Imported]:
    """100,000 CSV rows, every 1000th of them bad, imported once for the tests that need it
    (and deleted after them: the local database outlives test runs)."""
    tag = run_tag()
    data, bad = voters_csv(tag, 100_000, bad_every=1000)
    started = time.perf_counter()
    result = await _import(scheduler_pool, data)
    seconds = time.perf_counter() - started
    print(f"\nimport: 100,000 rows ({len(data) / 1e6:.1f} MB) in {seconds:.2f} s = "
          f"{100_000 / seconds:,.0f} rows/s")
    async with scheduler_pool.acquire() as conn:
        await conn.execute("ANALYZE voters")  # what autovacuum would do after a bulk load
    yield Imported(tag, result, bad, seconds)
    async with scheduler_pool.acquire() as conn:
        await conn.execute("DELETE FROM voters WHERE external_id LIKE $1 || '-%'", tag)


async def test_importing_100000_voters_keeps_good_rows_and_lists_each_bad_row(
    scheduler_pool: asyncpg.Pool, hundred_thousand: Imported
) -> None:
    tag, result, bad = hundred_thousand.tag, hundred_thousand.result, hundred_thousand.bad
    assert (result.inserted, result.updated, result.unchanged, result.rejected) == (
        99_900, 0, 0, 100)
    view = result.view()
    assert [e["line"] for e in view["errors"]] == sorted(bad)
    for error in view["errors"]:
        assert bad[error["line"]] in error["error"], error
    ids = await _voter_ids(scheduler_pool, tag)
    assert len(ids) == 99_900
    async with scheduler_pool.acquire() as conn:
        sample = await repo.get_voter(conn, ORG, ids[f"{tag}-1234"])
    assert sample is not None
    assert (sample["email"], sample["phone"], sample["preferred_language"],
            sample["attributes"]) == (f"{tag}.v1234@example.org", phone(1234), "da",
                                      {"ward": "Ward2"})


async def test_search_returns_one_page_by_name_email_or_phone_and_pages_by_id(
    scheduler_pool: asyncpg.Pool, hundred_thousand: Imported
) -> None:
    tag = hundred_thousand.tag
    ids = await _voter_ids(scheduler_pool, tag)

    async def search(q: str, after: int = 0, limit: int = 50) -> list[int]:
        rows = await service.search_voters(scheduler_pool, q, org=ORG, after=after, limit=limit)
        return [r["id"] for r in rows]

    latencies: list[float] = []
    for i in range(3, 100_000, 2003):  # 50 voters across the file
        digits = phone(i)[3:]
        for q, expected in [
            (f"{tag}.V{i}@", {ids[f"{tag}-{i}"]}),                # email, any case
            (f"{digits[:4]} {digits[4:]}", {ids[f"{tag}-{i}"]}),  # phone as typed
        ]:
            started = time.perf_counter()
            found = await search(q)
            latencies.append(time.perf_counter() - started)
            assert expected <= set(found), q
    started = time.perf_counter()
    family = await search(f"{tag}FAMILY7")
    latencies.append(time.perf_counter() - started)
    print(f"\nsearch at 100,000+ voters: {len(latencies)} queries, "
          f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")

    # A common term: 2000 matches, walked page by page in id order, none twice.
    assert len(family) == 50
    seen: list[int] = []
    after = 0
    while page := await search(f"{tag}family7", after=after, limit=500):
        seen += page
        after = page[-1]
    assert len(seen) == len(set(seen)) == 2000 and seen == sorted(seen)


async def test_reimport_upserts_by_external_id_without_duplicates(
    scheduler_pool: asyncpg.Pool,
) -> None:
    tag = run_tag()
    first, _ = voters_csv(tag, 1000)
    assert (await _import(scheduler_pool, first)).inserted == 1000
    # Again: 100 renamed, 50 new, the rest as before; blank cells clear, attributes merge.
    lines = first.decode().splitlines()
    for n in range(1, 101):
        lines[n] = lines[n].replace(f",Voter{n - 1},", f",Renamed{n - 1},")
    again, _ = voters_csv(tag, 50, start=1000)
    body = "\n".join([*lines, *again.decode().splitlines()[1:]]) + "\n"
    result = await _import(scheduler_pool, body.encode())
    assert (result.inserted, result.updated, result.unchanged, result.rejected) == (
        50, 100, 900, 0)
    ids = await _voter_ids(scheduler_pool, tag)
    assert len(ids) == 1050
    async with scheduler_pool.acquire() as conn:
        renamed = await repo.get_voter(conn, ORG, ids[f"{tag}-7"])
    assert renamed is not None and renamed["first_name"] == "Renamed7"


async def test_import_without_external_ids_matches_voters_by_email_in_any_case(
    scheduler_pool: asyncpg.Pool,
) -> None:
    tag = run_tag()
    body = f"email,first_name\n{tag}@example.org,Ada\n{tag}-2@example.org,Bo\n".encode()
    assert (await _import(scheduler_pool, body)).inserted == 2
    again = f"email,first_name\n{tag.upper()}@EXAMPLE.ORG,Ada L.\n".encode()
    result = await _import(scheduler_pool, again)
    assert (result.inserted, result.updated) == (0, 1)
    # The same voter twice in one file: the later row wins, the earlier one is reported.
    twice = f"email,first_name\n{tag}@example.org,One\n{tag}@example.org,Two\n".encode()
    result = await _import(scheduler_pool, twice)
    assert (result.updated, result.rejected) == (1, 1)
    assert result.errors == [{"line": 2, "error": "same voter as line 3, which was kept"}]
    rows = await service.search_voters(scheduler_pool, f"{tag}@", org=ORG, after=0, limit=10)
    assert [(r["email"], r["first_name"]) for r in rows] == [(f"{tag}@example.org", "Two")]


async def test_a_campaign_over_two_overlapping_lists_counts_each_voter_once(
    scheduler_pool: asyncpg.Pool,
) -> None:
    tag = run_tag()
    list_a, list_b = await _new_list(scheduler_pool, f"{tag} A"), await _new_list(
        scheduler_pool, f"{tag} B")
    data_a, _ = voters_csv(tag, 20)              # voters 0..19
    data_b, _ = voters_csv(tag, 20, start=10)    # voters 10..29: 10 in both lists
    assert (await _import(scheduler_pool, data_a, list_a)).inserted == 20
    result_b = await _import(scheduler_pool, data_b, list_b)
    assert (result_b.inserted, result_b.unchanged) == (10, 10)
    cid = await _draft_campaign(scheduler_pool)
    await service.target_lists(scheduler_pool, cid, domain.TargetLists(list_ids=[list_a, list_b]),
                               org=ORG)

    assert await _send_now(scheduler_pool, cid) == 30
    recipients = await _recipients(scheduler_pool, cid)
    ids = await _voter_ids(scheduler_pool, tag)
    assert sorted(r["voter_id"] for r in recipients) == sorted(ids.values())
    by_voter = {r["voter_id"]: r for r in recipients}
    snapshot = by_voter[ids[f"{tag}-15"]]
    assert (snapshot["email"], snapshot["first_name"], snapshot["attributes"]) == (
        f"{tag}.v15@example.org", "Voter15", {"ward": "Ward1", "preferred_language": "da"})
    # The voter's page lists the campaign once.
    page = await service.voter_page(scheduler_pool, ids[f"{tag}-15"], org=ORG)
    assert [c["campaign_id"] for c in page["campaigns"]] == [cid]
    assert sorted(x["name"] for x in page["lists"]) == [f"{tag} A", f"{tag} B"]


async def test_editing_a_voter_after_the_campaign_started_does_not_change_its_recipients(
    scheduler_pool: asyncpg.Pool,
) -> None:
    tag = run_tag()
    list_id = await _new_list(scheduler_pool, tag)
    data, _ = voters_csv(tag, 5)
    await _import(scheduler_pool, data, list_id)
    cid = await _draft_campaign(scheduler_pool)
    await service.target_lists(scheduler_pool, cid, domain.TargetLists(list_ids=[list_id]),
                               org=ORG)
    assert await _send_now(scheduler_pool, cid) == 5
    before = await _recipient_dicts(scheduler_pool, cid)

    voter_id = (await _voter_ids(scheduler_pool, tag))[f"{tag}-2"]
    edited = await service.edit_voter(
        scheduler_pool, voter_id, domain.EditVoter(email=f"{tag}.new@example.org",
                                                   first_name="Changed"),
        org=ORG, region=REGION,
    )
    assert edited["email"] == f"{tag}.new@example.org"
    late, _ = voters_csv(tag, 1, start=99)  # joins the list after the start
    await _import(scheduler_pool, late, list_id)

    assert await _recipient_dicts(scheduler_pool, cid) == before
    snapshot = next(r for r in before if r["voter_id"] == voter_id)
    assert (snapshot["email"], snapshot["first_name"]) == (f"{tag}.v2@example.org", "Voter2")


async def test_lists_can_be_targeted_only_by_draft_campaigns_and_deleted_only_when_unused(
    scheduler_pool: asyncpg.Pool,
) -> None:
    tag = run_tag()
    list_id = await _new_list(scheduler_pool, tag)
    await _import(scheduler_pool, voters_csv(tag, 1)[0], list_id)
    cid = await _draft_campaign(scheduler_pool)
    with pytest.raises(NotFound, match="list"):
        await service.target_lists(scheduler_pool, cid,
                                   domain.TargetLists(list_ids=[uuid.uuid4()]), org=ORG)
    with pytest.raises(Invalid, match="exists already"):
        await _new_list(scheduler_pool, tag)
    await service.target_lists(scheduler_pool, cid, domain.TargetLists(list_ids=[list_id]),
                               org=ORG)
    with pytest.raises(InvalidTransition, match=f"cannot delete list {list_id}"):
        await service.delete_list(scheduler_pool, list_id, org=ORG)
    assert await _send_now(scheduler_pool, cid) == 1
    with pytest.raises(InvalidTransition, match="is sending"):
        await service.target_lists(scheduler_pool, cid, domain.TargetLists(list_ids=[list_id]),
                                   org=ORG)
    await service.delete_list(scheduler_pool, list_id, org=ORG)  # started campaigns don't hold it


async def test_adding_unknown_voters_to_a_list_adds_nothing_and_names_them(
    scheduler_pool: asyncpg.Pool,
) -> None:
    tag = run_tag()
    list_id = await _new_list(scheduler_pool, tag)
    voter = await service.create_voter(scheduler_pool, domain.VoterIn(**voter_payload(tag)),
                                       org=ORG, region=REGION)
    with pytest.raises(Invalid) as err:
        await service.change_members(scheduler_pool, list_id,
                                     domain.VoterIds(voter_ids=[voter["id"], -1]), org=ORG,
                                     add=True)
    assert err.value.errors == [{"voter_id": -1, "error": "not found"}]
    assert (await service.get_list(scheduler_pool, list_id, org=ORG))["voters"] == 0
    ids = domain.VoterIds(voter_ids=[voter["id"]])
    assert await service.change_members(scheduler_pool, list_id, ids, org=ORG, add=True) == 1
    assert await service.change_members(scheduler_pool, list_id, ids, org=ORG, add=True) == 0
    assert await service.change_members(scheduler_pool, list_id, ids, org=ORG, add=False) == 1


async def test_creating_a_voter_twice_is_refused_naming_the_existing_voter(
    scheduler_pool: asyncpg.Pool,
) -> None:
    tag = run_tag()
    first = await service.create_voter(scheduler_pool, domain.VoterIn(**voter_payload(tag)),
                                       org=ORG, region=REGION)
    with pytest.raises(Invalid, match=f"voter {first['id']} has the same"):
        await service.create_voter(scheduler_pool, domain.VoterIn(**voter_payload(tag)),
                                   org=ORG, region=REGION)
    other = await service.create_voter(
        scheduler_pool, domain.VoterIn(**voter_payload(tag, 1)), org=ORG, region=REGION)
    with pytest.raises(Invalid, match=f"voter {first['id']} has the same"):
        await service.edit_voter(scheduler_pool, other["id"],
                                 domain.EditVoter(external_id=f"{tag}-0"), org=ORG, region=REGION)


async def test_deleting_a_voter_keeps_campaign_snapshots_and_erase_blanks_them_once_finished(
    scheduler_pool: asyncpg.Pool,
) -> None:
    tag = run_tag()
    list_id = await _new_list(scheduler_pool, tag)
    data, _ = voters_csv(tag, 3)
    await _import(scheduler_pool, data, list_id)
    finished, sending = await _draft_campaign(scheduler_pool), await _draft_campaign(
        scheduler_pool)
    for cid in (finished, sending):
        await service.target_lists(scheduler_pool, cid, domain.TargetLists(list_ids=[list_id]),
                                   org=ORG)
        assert await _send_now(scheduler_pool, cid) == 3
    await _end(scheduler_pool, finished)
    ids = await _voter_ids(scheduler_pool, tag)
    gone, erased = ids[f"{tag}-0"], ids[f"{tag}-1"]

    exported = await service.voter_export(scheduler_pool, erased, org=ORG)
    assert [s["campaign_id"] for s in exported["recipient_snapshots"]] == [finished, sending]
    assert [x["name"] for x in exported["lists"]] == [tag]
    assert exported["voter"]["email"] == f"{tag}.v1@example.org"

    assert await service.delete_voter(scheduler_pool, gone, org=ORG, erase=False) == {
        "deleted": gone, "campaigns": 2, "erased": 0, "erase_when_finished": 0}
    assert await service.delete_voter(scheduler_pool, erased, org=ORG, erase=True) == {
        "deleted": erased, "campaigns": 2, "erased": 1, "erase_when_finished": 1}
    with pytest.raises(NotFound):
        await service.voter_page(scheduler_pool, erased, org=ORG)

    def personal(r: asyncpg.Record) -> tuple[object, ...]:
        return (r["email"], r["phone"], r["first_name"], r["last_name"], r["attributes"])

    blank = (None, None, None, None, {})
    for cid in (finished, sending):
        rows = await _recipients(scheduler_pool, cid)
        assert len(rows) == 3  # the campaign still has every recipient
        assert [r["voter_id"] for r in rows] == [None, None, ids[f"{tag}-2"]]
        assert [r["voter_deleted"] for r in rows] == [True, True, False]
        assert personal(rows[0])[0] == f"{tag}.v0@example.org"  # deleted, not erased
    # Erased: at once where the campaign is over; where it is still sending, it keeps what it
    # needs to send until it ends.
    assert personal((await _recipients(scheduler_pool, finished))[1]) == blank
    still = (await _recipients(scheduler_pool, sending))[1]
    assert still["erase_pending"] and still["email"] == f"{tag}.v1@example.org"
    await _end(scheduler_pool, sending, "aborted")
    ended = (await _recipients(scheduler_pool, sending))[1]
    assert personal(ended) == blank and not ended["erase_pending"]
