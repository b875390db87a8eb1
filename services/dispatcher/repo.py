"""Dispatcher persistence (schema `dispatcher`): templates, and one delivery row per
(campaign, recipient, channel) holding its outcome — the dedupe record — in bulk."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg

from services.dispatcher import domain
from services.dispatcher.domain import CampaignTemplate, Outcome, Request
from shared import db
from shared.events import AddressOptedOut, CampaignStarted, ChannelTemplate, SenderInfo
from shared.wire import decode_outcome


async def save_template(conn: db.Conn, event: CampaignStarted) -> None:
    """A campaign's templates and sender as its `started` event told them."""
    await save_campaign_template(conn, CampaignTemplate(
        campaign_id=event.campaign_id, organisation_id=event.organisation_id,
        version=event.template.version, template_id=event.template.id,
        templates=dict(event.templates), sender=event.sender,
    ))


async def save_campaign_template(conn: db.Conn, template: CampaignTemplate) -> None:
    """A campaign's templates and sender, as a send request or its `started` event carried
    them (the first one stays)."""
    templates = {channel: t.model_dump() for channel, t in template.templates.items()}
    await conn.execute(
        """
        INSERT INTO templates (campaign_id, organisation_id, template_id, template_version,
                               templates, sender)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)
        ON CONFLICT (campaign_id) DO NOTHING
        """,
        template.campaign_id, template.organisation_id, template.template_id, template.version,
        json.dumps(templates), template.sender.model_dump_json(),
    )


async def load_templates(
    conn: db.Conn, campaign_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, CampaignTemplate]:
    rows = await conn.fetch(
        """
        SELECT campaign_id, organisation_id, template_id, template_version,
               templates::text AS templates,
               sender::text AS sender
        FROM templates WHERE campaign_id = ANY($1::uuid[])
        """,
        list(campaign_ids),
    )
    return {
        r["campaign_id"]: CampaignTemplate(
            campaign_id=r["campaign_id"],
            organisation_id=r["organisation_id"],
            template_id=r["template_id"],
            version=r["template_version"],
            templates={
                channel: ChannelTemplate(**t) for channel, t in json.loads(r["templates"]).items()
            },
            sender=SenderInfo.model_validate_json(r["sender"]),
        )
        for r in rows
    }


async def save_aborts(conn: db.Conn, campaign_ids: Sequence[uuid.UUID]) -> None:
    await conn.execute(
        """
        INSERT INTO aborted_campaigns (campaign_id) SELECT unnest($1::uuid[])
        ON CONFLICT DO NOTHING
        """,
        list(campaign_ids),
    )


async def aborted_campaigns(conn: db.Conn) -> set[uuid.UUID]:
    return {r["campaign_id"] for r in await conn.fetch("SELECT campaign_id FROM aborted_campaigns")}


async def settled_count(conn: db.Conn, campaign_id: uuid.UUID) -> int:
    """How many of the campaign's messages have an outcome (sent, failed or skipped)."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND outcome IS NOT NULL",
        campaign_id,
    ))


_DELIVERIES_IN = db.Staging("deliveries_in", {
    "campaign_id": "uuid", "recipient_id": "bigint", "channel": "text", "request_id": "uuid",
    "outcome": "json", "done_at": "timestamptz",
})
_DELIVERY_COLUMNS = _DELIVERIES_IN.columns


async def settled(
    conn: db.Conn, requests: Sequence[Request]
) -> dict[tuple[uuid.UUID, int, str], Outcome]:
    """The outcomes already recorded for some of the requests' dedupe keys.

    Keys returned were sent (or settled) before and must not be sent again, only re-reported.
    A key without a row is sent; its row is written once, with its outcome (`record_outcomes`).
    (It used to be claimed by an insert before the call and updated after it; a claim without
    an outcome was treated exactly as no row — sent again, with the same idempotency key — so
    the claim only doubled the writes.)

    Looked up by ranges of recipient ids, not key by key: a campaign's recipients are numbered
    nearly consecutively and a batch carries runs of them (the scheduler's pages, cut into
    records), so a batch of 5,000 requests is a few dozen primary-key range scans, which find
    nothing unless the batch was seen before. The keys found are matched against the requests'
    own, and only theirs have their outcomes read.
    """
    settled_found, _ = await seen_before(conn, requests)
    return settled_found


# complexity: the per-batch dedupe look-up, its per-row filters inline (docs/benchmarks.md)
async def seen_before(
    conn: db.Conn, requests: Sequence[Request]
) -> tuple[dict[tuple[uuid.UUID, int, str], Outcome], set[Key]]:
    """The outcomes recorded for some of the requests' keys, and those of their keys that are
    on the retry schedule: both found in one statement."""
    campaigns, lows, highs = _id_ranges(requests)
    # One index range scan per range, whatever the statistics say: `OFFSET 0` keeps the
    # planner from merging the subquery into a join. (Merged, with a 1M-recipient campaign in
    # the table, it chose a hash join over a sequential scan: 1.7 s a batch.)
    found = await conn.fetch(
        """
        SELECT d.campaign_id, d.recipient_id, d.channel, false AS scheduled
        FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS r(campaign_id, lo, hi)
        CROSS JOIN LATERAL (
            SELECT campaign_id, recipient_id, channel FROM deliveries d
            WHERE d.campaign_id = r.campaign_id AND d.recipient_id BETWEEN r.lo AND r.hi
            OFFSET 0
        ) AS d
        UNION ALL
        SELECT t.campaign_id, t.recipient_id, t.channel, true
        FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS r(campaign_id, lo, hi)
        CROSS JOIN LATERAL (
            SELECT campaign_id, recipient_id, channel FROM retries t
            WHERE t.campaign_id = r.campaign_id AND t.recipient_id BETWEEN r.lo AND r.hi
            OFFSET 0
        ) AS t
        """,
        campaigns, lows, highs,
    )
    if not found:  # the common case: nothing of this batch was seen before
        return {}, set()
    wanted = {domain.dedupe_key(r) for r in requests}
    scheduled = {k for k in (tuple(row[:3]) for row in found if row[3]) if k in wanted}
    keys: list[Key] = [k for k in (tuple(row[:3]) for row in found if not row[3])
                       if k in wanted]
    return (await recorded_outcomes(conn, keys) if keys else {}), scheduled


# Recipient ids this close together share a range: the ids between them that are not asked
# for cost a row read at most, and are left out when matched.
_RANGE_GAP = 8


def _id_ranges(
    requests: Sequence[Request],
) -> tuple[list[uuid.UUID], list[int], list[int]]:
    """The requests' recipient ids as runs per campaign: (campaign ids, lows, highs)."""
    # Keyed by the campaign id's integer (hashed in C; a batch's requests come in runs of
    # one campaign, and a UUID's own hash is computed in Python).
    by_campaign: dict[int, tuple[uuid.UUID, set[int]]] = {}
    for r in requests:
        entry = by_campaign.get(r.campaign_id.int)
        if entry is None:
            entry = by_campaign[r.campaign_id.int] = (r.campaign_id, set())
        entry[1].add(r.recipient_id)
    campaigns: list[uuid.UUID] = []
    lows: list[int] = []
    highs: list[int] = []
    for campaign_id, id_set in by_campaign.values():
        ordered = sorted(id_set)
        low = previous = ordered[0]
        for rid in ordered[1:]:
            if rid - previous > _RANGE_GAP:
                campaigns.append(campaign_id)
                lows.append(low)
                highs.append(previous)
                low = rid
            previous = rid
        campaigns.append(campaign_id)
        lows.append(low)
        highs.append(previous)
    return campaigns, lows, highs


async def record_outcomes(
    conn: db.Conn, outcomes: Sequence[tuple[Request, Outcome, bytes]]
) -> None:
    """Store each request's outcome, as the JSON that is published; the first one recorded for
    a dedupe key stays (a row claimed without an outcome by an older version gets it).

    The keys were looked up just before (`settled`), so they are nearly always new: the rows
    are copied straight in. Only if a key is there after all (another dispatcher recorded it
    meanwhile, or an old claim) does the batch go the careful way, staged and inserted with
    `ON CONFLICT`.
    """
    done_at = datetime.now(UTC)
    rows = [
        (o.campaign_id, o.recipient_id, o.channel, r.event_id, data.decode(), done_at)
        for r, o, data in outcomes
    ]
    if await db.copy_if_all_new(conn, "deliveries", _DELIVERY_COLUMNS, rows):
        return
    async with conn.transaction():
        await _insert_new_outcomes(conn, rows)


async def _insert_new_outcomes(conn: db.Conn, rows: Sequence[tuple[Any, ...]]) -> None:
    """Outcome rows staged and inserted with `ON CONFLICT`: the first outcome recorded for a
    key stays (a row claimed without an outcome by an older version gets it). In a
    transaction."""
    if not rows:
        return
    await _DELIVERIES_IN.load(conn, rows)
    await conn.execute(
        f"""
        INSERT INTO deliveries AS d ({", ".join(_DELIVERY_COLUMNS)})
        SELECT * FROM {_DELIVERIES_IN.name}
        ON CONFLICT (campaign_id, recipient_id, channel) DO UPDATE
        SET outcome = excluded.outcome, done_at = excluded.done_at
        WHERE d.outcome IS NULL
        """
    )


async def save_opt_outs(conn: db.Conn, events: Sequence[AddressOptedOut]) -> None:
    await conn.execute(
        """
        INSERT INTO opt_outs (organisation_id, address)
        SELECT * FROM unnest($1::uuid[], $2::text[])
        ON CONFLICT DO NOTHING
        """,
        [e.organisation_id for e in events], [e.address for e in events],
    )


async def all_opt_outs(conn: db.Conn) -> set[tuple[uuid.UUID, str]]:
    rows = await conn.fetch("SELECT organisation_id, address FROM opt_outs")
    return {(r["organisation_id"], r["address"]) for r in rows}


# --- Claims, the abort gate and the retry schedule ---------------------------------------------

Key = tuple[uuid.UUID, int, str]


async def ensure_gates(conn: db.Conn, campaign_ids: Sequence[uuid.UUID]) -> None:
    """Each campaign that claims go through has a gate row (created open)."""
    await conn.execute(
        "INSERT INTO gates (campaign_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING",
        list(campaign_ids),
    )


_STEP = """
    WITH open_gates AS (
        SELECT campaign_id FROM gates
        WHERE campaign_id = ANY($8::uuid[]) AND aborted_at IS NULL
        FOR SHARE
    ), live AS (
        SELECT batch_id FROM batches WHERE batch_id = $6 AND superseded_at IS NULL
        FOR SHARE
    ), recorded AS (
        INSERT INTO deliveries AS d (campaign_id, recipient_id, channel, request_id, outcome,
                                     done_at)
        SELECT o.*, now()
        FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::uuid[], $5::json[])
             AS o(campaign_id, recipient_id, channel, request_id, outcome)
        {on_conflict}
    ), groups AS (
        SELECT (g->>0)::uuid AS campaign_id, g->>1 AS channel,
               (SELECT range_agg(int8range((r->>0)::bigint, (r->>1)::bigint, '[]'))
                FROM json_array_elements(g->2) AS r) AS runs
        FROM json_array_elements($9::json) AS g
    ), claimed AS (
        INSERT INTO claims (batch_id, campaign_id, channel, recipient_runs, claimed_by)
        SELECT $6, campaign_id, channel, runs, $7 FROM groups
        WHERE campaign_id IN (SELECT campaign_id FROM open_gates)
          AND EXISTS (SELECT 1 FROM live)
        RETURNING campaign_id
    )
    SELECT campaign_id FROM claimed
    UNION ALL
    SELECT NULL WHERE $9::json::text <> '[]' AND NOT EXISTS (SELECT 1 FROM live)
"""
# The keys of a step's outcomes were looked up just before their calls, so they are nearly
# always new: a plain insert (no speculative insertion per row). Only if one is there after
# all does the step run again with `ON CONFLICT` (the first outcome recorded for a key stays).
_STEP_NEW = _STEP.format(on_conflict="")
_STEP = _STEP.format(on_conflict="""
        ON CONFLICT (campaign_id, recipient_id, channel) DO UPDATE
        SET outcome = excluded.outcome, done_at = excluded.done_at
        WHERE d.outcome IS NULL""")


class Step(NamedTuple):
    """What a step's claims got: the campaigns whose claims were taken (an aborted
    campaign's are refused), and whether all were refused because a later attempt at the
    batch superseded this one."""

    taken: set[uuid.UUID]
    superseded: bool


# complexity: one round trip per step: every outcome's columns built inline (docs/benchmarks.md)
async def step(
    conn: db.Conn,
    *,
    outcomes: Sequence[tuple[Request, Outcome, bytes]] = (),
    retries: Sequence[tuple[uuid.UUID, int, str, str, int, datetime, datetime, str | None]] = (),
    claims: Sequence[tuple[uuid.UUID, str, Sequence[int]]] = (),
    batch_id: uuid.UUID | None = None,
    owner: str = "",
) -> Step:
    """One statement (one round trip, one commit): record outcomes (the first one recorded
    for a key stays) and claim groups of (campaign, channel, recipient ids) before their
    provider calls start.

    The claims hold their campaigns' gate rows in share mode until the statement commits, so
    an abort (`close_gate`, which updates the row) waits for the claims in progress, counts
    them, and every claim after it sees the gate closed (a row lock is re-checked against the
    newest version of the row). They hold their batch's row the same way, so a takeover
    (`register_batch` by a later attempt) waits for them, reads them, and every claim of the
    batch after it is refused. Gate rows must exist (`ensure_gates`), and the batch's row
    (`register_batch`). Retries (rare) go in the same transaction."""
    campaign_ids = list({c for c, _, _ in claims})
    args = (
        [o.campaign_id for _, o, _ in outcomes], [o.recipient_id for _, o, _ in outcomes],
        [o.channel for _, o, _ in outcomes], [r.event_id for r, _, _ in outcomes],
        [data.decode() for _, _, data in outcomes],
        batch_id, owner, campaign_ids,
        json.dumps([[str(c), ch, runs_of(ids)] for c, ch, ids in claims]),
    )
    if not retries:
        try:
            rows = await conn.fetch(_STEP_NEW, *args)
        except asyncpg.UniqueViolationError:  # nothing of the statement was written
            rows = await conn.fetch(_STEP, *args)
    else:
        async with conn.transaction():
            await schedule_retries(conn, retries)
            rows = await conn.fetch(_STEP, *args)
    taken = {r["campaign_id"] for r in rows}
    superseded = None in taken
    taken.discard(None)
    return Step(taken, superseded)


def runs_of(ids: Sequence[int]) -> list[list[int]]:
    """Ids as runs of consecutive ids, [first, last] each, in the order given: exactly the ids,
    no more (an id not among them never falls inside a run)."""
    runs: list[list[int]] = []
    run: list[int] | None = None
    for rid in ids:
        if run is not None and rid == run[1] + 1:
            run[1] = rid
        else:
            run = [rid, rid]
            runs.append(run)
    return runs


async def claim(
    conn: db.Conn,
    batch_id: uuid.UUID,
    groups: Sequence[tuple[uuid.UUID, str, Sequence[int]]],
    *,
    owner: str,
    spans: Sequence[tuple[int, int, int]] = (),
) -> set[uuid.UUID]:
    """A batch registered and some of its messages claimed, nothing else written (what a
    process leaves behind if it dies right after)."""
    await ensure_gates(conn, list({c for c, _, _ in groups}))
    await register_batch(conn, batch_id, owner=owner, spans=spans)
    return (await step(conn, claims=groups, batch_id=batch_id, owner=owner)).taken


async def refresh_claims(conn: db.Conn, batch_id: uuid.UUID) -> None:
    """The owner is still at work: its claims stay fresh."""
    await conn.execute("UPDATE claims SET claimed_at = now() WHERE batch_id = $1", batch_id)


# Registrations at the same Kafka positions go one at a time (a transaction-scoped advisory
# lock per partition, this number being the lock space), so that of two attempts at the same
# records, the later one always sees the earlier one.
_REGISTRATION_LOCKS = 20_201

_REGISTER = """
    WITH earlier AS (
        SELECT DISTINCT b.batch_id
        FROM unnest($3::int[], $4::bigint[], $5::bigint[]) AS s(p, lo, hi)
        CROSS JOIN LATERAL (
            SELECT batch_id FROM batch_spans b
            WHERE b.topic_partition = s.p AND b.last_offset >= s.lo AND b.first_offset <= s.hi
            OFFSET 0
        ) AS b
    ), superseded AS (
        UPDATE batches SET superseded_at = now()
        WHERE batch_id IN (SELECT batch_id FROM earlier) AND superseded_at IS NULL
    ), mine AS (
        INSERT INTO batches (batch_id, owner) VALUES ($1, $2)
    ), spans AS (
        INSERT INTO batch_spans (batch_id, topic_partition, first_offset, last_offset)
        SELECT $1, * FROM unnest($3::int[], $4::bigint[], $5::bigint[])
    )
    SELECT batch_id FROM earlier
"""


async def register_batch(
    conn: db.Conn,
    batch_id: uuid.UUID,
    *,
    owner: str,
    spans: Sequence[tuple[int, int, int]] = (),
) -> list[uuid.UUID]:
    """Register an attempt at a batch read from these Kafka positions (partition, first
    offset, last offset), before it claims anything, and supersede every earlier attempt at
    any of them: from this commit on, their claims are refused (a claim in progress is waited
    for). Returns the earlier attempts, whose claims (`claims_of`) are then complete.
    Nothing earlier is the common case: one index probe per partition."""
    parts = [s[0] for s in spans]
    async with conn.transaction():
        if parts:
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, p) "
                "FROM (SELECT DISTINCT unnest($2::int[]) AS p ORDER BY 1) AS s",
                _REGISTRATION_LOCKS, parts)
        # A new statement (a new snapshot) after the locks: registrations committed while
        # this one waited are seen.
        rows = await conn.fetch(_REGISTER, batch_id, owner, parts,
                                [s[1] for s in spans], [s[2] for s in spans])
    return [r["batch_id"] for r in rows]


async def claims_of(
    conn: db.Conn, batch_ids: Sequence[uuid.UUID]
) -> dict[Key, float]:
    """The keys these attempts claimed, with the age in seconds of their freshest claim."""
    if not batch_ids:
        return {}
    rows = await conn.fetch(
        """
        SELECT campaign_id, channel, lower(r) AS lo, upper(r) AS hi,
               extract(epoch FROM now() - claimed_at)::float8 AS age
        FROM claims CROSS JOIN LATERAL (
            SELECT unnest(recipient_runs)
            UNION ALL
            SELECT int8range(id, id, '[]') FROM unnest(recipient_ids) AS id
        ) AS runs(r)
        WHERE batch_id = ANY($1::uuid[])
        """,
        list(batch_ids),
    )
    ages: dict[Key, float] = {}
    for r in rows:
        for rid in range(r["lo"], r["hi"]):
            key = (r["campaign_id"], rid, r["channel"])
            ages[key] = min(ages.get(key, r["age"]), r["age"])
    return ages


async def prune_batches(conn: db.Conn, older_than_seconds: float) -> int:
    """Forget batches registered longer ago than this, with their spans and claims (their
    records were committed or dropped by Kafka's retention long since: nothing can ask for
    them again). How many batches."""
    return int(await conn.fetchval(
        """
        WITH old AS (
            DELETE FROM batches WHERE created_at < now() - make_interval(secs => $1)
            RETURNING batch_id
        ), spans AS (
            DELETE FROM batch_spans WHERE created_at < now() - make_interval(secs => $1)
        ), claimed AS (
            DELETE FROM claims WHERE claimed_at < now() - make_interval(secs => $1)
        )
        SELECT count(*) FROM old
        """,
        older_than_seconds,
    ))


async def close_gate(conn: db.Conn, campaign_id: uuid.UUID) -> None:
    """Refuse every claim for the campaign from now on; waits for the claims in progress
    (which then count as going out)."""
    await conn.execute(
        """
        INSERT INTO gates (campaign_id, aborted_at) VALUES ($1, now())
        ON CONFLICT (campaign_id) DO UPDATE SET aborted_at = coalesce(gates.aborted_at, now())
        """,
        campaign_id,
    )


async def sent_or_in_flight(conn: db.Conn, campaign_id: uuid.UUID) -> int:
    """How many of the campaign's messages were settled other than by its abort, or claimed
    (their calls may still complete), or are on the retry schedule mid-call: everything else
    still pending will be skipped `aborted`."""
    return int(await conn.fetchval(
        """
        SELECT
          (SELECT count(*) FROM deliveries
           WHERE campaign_id = $1 AND outcome IS NOT NULL
             AND coalesce(outcome->>'reason', '') <> 'aborted')
        + (SELECT count(*) FROM claims c CROSS JOIN LATERAL (
               SELECT generate_series(lower(run), upper(run) - 1)
               FROM unnest(c.recipient_runs) AS run
               UNION ALL
               SELECT unnest(c.recipient_ids)) AS r(id)
           WHERE c.campaign_id = $1 AND NOT EXISTS (
               SELECT 1 FROM deliveries d
               WHERE d.campaign_id = c.campaign_id AND d.recipient_id = r.id
                 AND d.channel = c.channel))
        """,
        campaign_id,
    ))


async def scheduled_keys(conn: db.Conn, requests: Sequence[Request]) -> set[Key]:
    """Those of the requests' keys that are on the retry schedule (the schedule owns them)."""
    campaigns, lows, highs = _id_ranges(requests)
    rows = await conn.fetch(
        """
        SELECT r.campaign_id, r.recipient_id, r.channel
        FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS k(campaign_id, lo, hi)
        CROSS JOIN LATERAL (
            SELECT campaign_id, recipient_id, channel FROM retries r
            WHERE r.campaign_id = k.campaign_id AND r.recipient_id BETWEEN k.lo AND k.hi
            OFFSET 0
        ) AS r
        """,
        campaigns, lows, highs,
    )
    return {(r["campaign_id"], r["recipient_id"], r["channel"]) for r in rows}


async def any_scheduled(conn: db.Conn) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM retries)"))


_RETRY_COLUMNS = ("campaign_id", "recipient_id", "channel", "request", "attempts", "first_at",
                  "due_at", "last_reason")


async def schedule_retries(
    conn: db.Conn,
    rows: Sequence[tuple[uuid.UUID, int, str, str, int, datetime, datetime, str | None]],
) -> None:
    """Put messages on (or back on) the retry schedule, waiting until their due time."""
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO retries AS r (campaign_id, recipient_id, channel, request, attempts,
                                  first_at, due_at, last_reason)
        SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::json[], $5::int[],
                             $6::timestamptz[], $7::timestamptz[], $8::text[])
        ON CONFLICT (campaign_id, recipient_id, channel) DO UPDATE
        SET status = 'waiting', attempts = excluded.attempts, due_at = excluded.due_at,
            last_reason = excluded.last_reason, owner = NULL, claimed_at = NULL
        """,
        *(list(column) for column in zip(*rows, strict=True)),
    )


async def take_due(
    conn: db.Conn, *, owner: str, limit: int, lease_seconds: float,
    channels: Sequence[str],
) -> list[asyncpg.Record]:
    """Claim up to `limit` scheduled messages that are due (for the given channels), and the
    ones left `sending` or `settled` by an owner that stopped refreshing them."""
    return await conn.fetch(
        """
        UPDATE retries r SET status = CASE WHEN r.status = 'settled' THEN 'settled'
                                           ELSE 'sending' END,
                             owner = $1, claimed_at = now(),
                             attempts = r.attempts
        FROM (
            SELECT campaign_id, recipient_id, channel, status AS was
            FROM retries
            WHERE channel = ANY($4::text[]) AND (
                (status = 'waiting' AND due_at <= now())
                OR (status IN ('sending', 'settled')
                    AND claimed_at < now() - make_interval(secs => $3)))
            ORDER BY due_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ) AS due
        WHERE (r.campaign_id, r.recipient_id, r.channel)
            = (due.campaign_id, due.recipient_id, due.channel)
        RETURNING r.campaign_id, r.recipient_id, r.channel, r.request::text AS request,
                  r.attempts, extract(epoch FROM r.first_at)::float8 AS first_at,
                  r.last_reason, due.was
        """,
        owner, limit, lease_seconds, list(channels),
    )


async def refresh_retries(conn: db.Conn, keys: Sequence[Key], owner: str) -> None:
    await conn.execute(
        """
        UPDATE retries SET claimed_at = now()
        WHERE (campaign_id, recipient_id, channel) IN (
            SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[])) AND owner = $4
        """,
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], owner,
    )


async def settle_retries(
    conn: db.Conn, outcomes: Sequence[tuple[Request, Outcome, bytes]]
) -> None:
    """Record scheduled messages' final outcomes (the first one of a key stays) and mark them
    `settled` until published."""
    if not outcomes:
        return
    done_at = datetime.now(UTC)
    async with conn.transaction():
        await _insert_new_outcomes(conn, [
            (o.campaign_id, o.recipient_id, o.channel, r.event_id, data.decode(), done_at)
            for r, o, data in outcomes
        ])
        await conn.execute(
            f"""
            UPDATE retries r SET status = 'settled', claimed_at = now()
            FROM {_DELIVERIES_IN.name} k
            WHERE (r.campaign_id, r.recipient_id, r.channel)
                = (k.campaign_id, k.recipient_id, k.channel)
            """
        )


async def recorded_outcomes(conn: db.Conn, keys: Sequence[Key]) -> dict[Key, Outcome]:
    rows = await conn.fetch(
        """
        SELECT d.campaign_id, d.recipient_id, d.channel, d.outcome::text AS outcome
        FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS k(campaign_id, recipient_id, channel)
        JOIN deliveries d USING (campaign_id, recipient_id, channel)
        WHERE d.outcome IS NOT NULL
        """,
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
    )
    return {
        (r["campaign_id"], r["recipient_id"], r["channel"]): decode_outcome(r["outcome"])
        for r in rows
    }


async def forget_retries(conn: db.Conn, keys: Sequence[Key]) -> None:
    """Settled and published: off the schedule."""
    await conn.execute(
        """
        DELETE FROM retries WHERE (campaign_id, recipient_id, channel) IN (
            SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[]))
        """,
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
    )


async def aborted_gates(conn: db.Conn) -> set[uuid.UUID]:
    rows = await conn.fetch("SELECT campaign_id FROM gates WHERE aborted_at IS NOT NULL")
    return {r["campaign_id"] for r in rows}


async def aborted_gates_of(
    conn: db.Conn, campaign_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT campaign_id FROM gates WHERE campaign_id = ANY($1::uuid[]) "
        "AND aborted_at IS NOT NULL", list(campaign_ids))
    return {r["campaign_id"] for r in rows}
