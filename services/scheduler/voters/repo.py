"""Voter directory persistence (schema `scheduler`): explicit SQL over asyncpg.

Every voter and list query is scoped by organisation, although there is only one for now.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.scheduler.voters.domain import COLUMNS, ImportRow, VoterFields
from shared.db import Conn

_VOTER_COLUMNS = """
    v.id, v.external_id, v.first_name, v.last_name, v.email, v.phone, v.preferred_language,
    v.attributes, v.opted_out, v.opted_out_at, v.created_at, v.updated_at
"""
_MAX_SNAPSHOT_ATTEMPTS = 3


# --- voters ---------------------------------------------------------------------------------

async def insert_voter(
    conn: Conn, org: uuid.UUID, f: VoterFields
) -> asyncpg.Record | None:
    """The new voter, or None if a voter with the same identity (match key) exists."""
    return await conn.fetchrow(
        f"""
        INSERT INTO voters AS v (organisation_id, external_id, first_name, last_name, email,
                                 phone, preferred_language, attributes)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (organisation_id, match_key) DO NOTHING
        RETURNING {_VOTER_COLUMNS}
        """,
        org, *f,
    )


async def voter_with_identity(
    conn: Conn, org: uuid.UUID, f: VoterFields
) -> int | None:
    found: int | None = await conn.fetchval(
        """
        SELECT id FROM voters
        WHERE organisation_id = $1 AND match_key = voter_match_key($2, $3, $4)
        """,
        org, f.external_id, f.email, f.phone,
    )
    return found


async def get_voter(
    conn: Conn, org: uuid.UUID, voter_id: int, *, lock: bool = False
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {_VOTER_COLUMNS} FROM voters v WHERE v.id = $1 AND v.organisation_id = $2
        {"FOR UPDATE" if lock else ""}
        """,
        voter_id, org,
    )


async def update_voter(
    conn: Conn, org: uuid.UUID, voter_id: int, f: VoterFields
) -> asyncpg.Record:
    """The voter must exist (the caller holds its row lock). Raises
    asyncpg.UniqueViolationError if the new identity is another voter's."""
    row = await conn.fetchrow(
        f"""
        UPDATE voters v
        SET external_id = $3, first_name = $4, last_name = $5, email = $6, phone = $7,
            preferred_language = $8, attributes = $9, updated_at = now()
        WHERE v.id = $1 AND v.organisation_id = $2
        RETURNING {_VOTER_COLUMNS}
        """,
        voter_id, org, *f,
    )
    assert row is not None, f"voter {voter_id} vanished under its row lock"
    return row


async def search_voters(
    conn: Conn, org: uuid.UUID, pattern: str | None, after_id: int, limit: int
) -> list[asyncpg.Record]:
    """One page of voters by id, optionally those whose name/email/phone contain a pattern."""
    if pattern is None:
        return await conn.fetch(
            f"""
            SELECT {_VOTER_COLUMNS} FROM voters v
            WHERE v.organisation_id = $1 AND v.id > $2 ORDER BY v.id LIMIT $3
            """,
            org, after_id, limit,
        )
    async with conn.transaction():
        # Planned for this pattern each time: a generic plan cannot tell a rare term (use the
        # trigram index) from a common one (walk the primary key), and guessing wrong on a
        # million voters costs a full scan.
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return await conn.fetch(
            f"""
            SELECT {_VOTER_COLUMNS} FROM voters v
            WHERE v.organisation_id = $1 AND v.search_text LIKE $4 AND v.id > $2
            ORDER BY v.id LIMIT $3
            """,
            org, after_id, limit, pattern,
        )


async def lists_of_voter(conn: Conn, voter_id: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT l.id, l.name, m.added_at FROM list_members m JOIN lists l ON l.id = m.list_id
        WHERE m.voter_id = $1 ORDER BY l.name
        """,
        voter_id,
    )
    return [{"id": str(r["id"]), "name": r["name"], "added_at": r["added_at"].isoformat()}
            for r in rows]


async def campaigns_of_voter(conn: Conn, voter_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT c.id AS campaign_id, c.name, c.state, c.started_at, c.completed_at,
               r.id AS recipient_id
        FROM recipients r JOIN campaigns c ON c.id = r.campaign_id
        WHERE r.voter_id = $1
        ORDER BY c.started_at DESC NULLS LAST, c.id
        """,
        voter_id,
    )


async def snapshots_of_voter(conn: Conn, voter_id: int) -> list[asyncpg.Record]:
    """Every recipient row copied from the voter: what the campaigns hold about them."""
    return await conn.fetch(
        """
        SELECT r.campaign_id, c.name AS campaign_name, c.state AS campaign_state,
               r.id AS recipient_id, r.email, r.phone, r.first_name, r.last_name, r.attributes
        FROM recipients r JOIN campaigns c ON c.id = r.campaign_id
        WHERE r.voter_id = $1
        ORDER BY c.started_at, c.id
        """,
        voter_id,
    )


async def lock_campaigns_of_voter(
    conn: Conn, voter_id: int
) -> list[tuple[uuid.UUID, str]]:
    """The voter's campaigns and states, share-locked: a campaign cannot end (and so run its
    erase trigger) between reading its state here and marking its snapshot."""
    rows = await conn.fetch(
        """
        SELECT c.id, c.state FROM recipients r JOIN campaigns c ON c.id = r.campaign_id
        WHERE r.voter_id = $1 ORDER BY c.id FOR SHARE OF c
        """,
        voter_id,
    )
    return [(r["id"], r["state"]) for r in rows]


async def release_snapshots(
    conn: Conn,
    voter_id: int,
    *,
    erase_now: Sequence[uuid.UUID],
    erase_later: Sequence[uuid.UUID],
) -> list[tuple[uuid.UUID, int]]:
    """Before the voter row goes: mark its snapshots `voter_deleted`; blank the personal fields
    of those in `erase_now`, flag those in `erase_later` (blanked when their campaign ends).
    The (campaign id, recipient id) of the snapshots blanked now."""
    rows = await conn.fetch(
        """
        UPDATE recipients r
        SET voter_deleted = true,
            erase_pending = r.campaign_id = ANY($3::uuid[]),
            email = CASE WHEN r.campaign_id = ANY($2::uuid[]) THEN NULL ELSE r.email END,
            phone = CASE WHEN r.campaign_id = ANY($2::uuid[]) THEN NULL ELSE r.phone END,
            first_name = CASE WHEN r.campaign_id = ANY($2::uuid[]) THEN NULL
                              ELSE r.first_name END,
            last_name = CASE WHEN r.campaign_id = ANY($2::uuid[]) THEN NULL
                             ELSE r.last_name END,
            attributes = CASE WHEN r.campaign_id = ANY($2::uuid[]) THEN '{}'::jsonb
                              ELSE r.attributes END
        WHERE r.voter_id = $1
        RETURNING r.campaign_id, r.id, r.campaign_id = ANY($2::uuid[]) AS erased
        """,
        voter_id, list(erase_now), list(erase_later),
    )
    return [(r["campaign_id"], r["id"]) for r in rows if r["erased"]]


async def delete_voter(conn: Conn, org: uuid.UUID, voter_id: int) -> bool:
    status = await conn.execute(
        "DELETE FROM voters WHERE id = $1 AND organisation_id = $2", voter_id, org
    )
    return status == "DELETE 1"


# --- CSV import -----------------------------------------------------------------------------

async def _ensure_import_table(conn: Conn) -> None:
    # Per session and emptied at each commit: created once per pooled connection, so statements
    # prepared against it stay valid.
    await conn.execute(
        """
        CREATE TEMP TABLE IF NOT EXISTS voter_import (
            line                integer NOT NULL,
            external_id         text,
            first_name          text,
            last_name           text,
            email               text,
            phone               text,
            preferred_language  text,
            attributes          jsonb NOT NULL
        ) ON COMMIT DELETE ROWS
        """
    )


async def upsert_import_batch(
    conn: Conn,
    org: uuid.UUID,
    rows: Sequence[ImportRow],
    *,
    columns: Sequence[str],
    merge_attributes: bool,
    list_id: uuid.UUID | None,
) -> tuple[int, int, list[tuple[int, int]]]:
    """Upsert one batch of good rows by identity (external_id, else email, else phone).

    COPY into a staging table, then one INSERT ... ON CONFLICT. On a match only the columns the
    file has are overwritten (a blank cell clears), attributes are merged, and a row that
    changes nothing writes nothing. Within the batch the last row of an identity wins.
    Returns (inserted, updated, [(superseded line, kept line)]).
    """
    assert set(columns) <= set(COLUMNS)
    sets = [f"{c} = excluded.{c}" for c in columns]
    old = [f"v.{c}" for c in columns]
    new = [f"excluded.{c}" for c in columns]
    if merge_attributes:
        sets.append("attributes = v.attributes || excluded.attributes")
        old.append("v.attributes")
        new.append("v.attributes || excluded.attributes")
    async with conn.transaction():
        await _ensure_import_table(conn)
        await conn.copy_records_to_table("voter_import", records=rows, columns=ImportRow._fields)
        superseded = await conn.fetch(
            """
            SELECT line, kept FROM (
                SELECT line, max(line) OVER (
                    PARTITION BY voter_match_key(external_id, email, phone)) AS kept
                FROM voter_import
            ) s WHERE line <> kept ORDER BY line
            """
        )
        # In key order, so that two imports touching the same voters lock them in the same
        # order and cannot deadlock. `xmax = 0` tells a fresh insert from an update.
        results = await conn.fetch(
            f"""
            INSERT INTO voters AS v (organisation_id, external_id, first_name, last_name, email,
                                     phone, preferred_language, attributes)
            SELECT $1, external_id, first_name, last_name, email, phone, preferred_language,
                   attributes
            FROM (
                SELECT DISTINCT ON (voter_match_key(external_id, email, phone)) *
                FROM voter_import
                ORDER BY voter_match_key(external_id, email, phone), line DESC
            ) latest
            ORDER BY voter_match_key(external_id, email, phone)
            ON CONFLICT (organisation_id, match_key) DO UPDATE
            SET {", ".join([*sets, "updated_at = now()"])}
            WHERE ({", ".join(old)}) IS DISTINCT FROM ({", ".join(new)})
            RETURNING xmax = 0 AS inserted
            """,
            org,
        )
        if list_id is not None:
            await conn.execute(
                """
                INSERT INTO list_members (list_id, voter_id)
                SELECT $2, v.id FROM voter_import s
                JOIN voters v ON v.organisation_id = $1
                             AND v.match_key = voter_match_key(s.external_id, s.email, s.phone)
                ON CONFLICT DO NOTHING
                """,
                org, list_id,
            )
    inserted = sum(1 for r in results if r["inserted"])
    return inserted, len(results) - inserted, [(r["line"], r["kept"]) for r in superseded]


# --- lists ----------------------------------------------------------------------------------

_LIST_COLUMNS = """
    l.id, l.name, l.created_at,
    (SELECT count(*) FROM list_members m WHERE m.list_id = l.id) AS voters
"""


async def insert_list(
    conn: Conn, org: uuid.UUID, list_id: uuid.UUID, name: str
) -> asyncpg.Record | None:
    """The new list, or None if the organisation has a list of that name."""
    return await conn.fetchrow(
        """
        WITH l AS (
            INSERT INTO lists (id, organisation_id, name) VALUES ($1, $2, $3)
            ON CONFLICT (organisation_id, name) DO NOTHING
            RETURNING *
        )
        SELECT l.id, l.name, l.created_at, 0::bigint AS voters FROM l
        """,
        list_id, org, name,
    )


async def get_list(
    conn: Conn, org: uuid.UUID, list_id: uuid.UUID, *, lock: bool = False
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {_LIST_COLUMNS} FROM lists l WHERE l.id = $1 AND l.organisation_id = $2
        {"FOR UPDATE OF l" if lock else ""}
        """,
        list_id, org,
    )


async def all_lists(conn: Conn, org: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_LIST_COLUMNS} FROM lists l WHERE l.organisation_id = $1 ORDER BY l.name", org
    )


async def unstarted_campaigns_targeting(
    conn: Conn, list_id: uuid.UUID
) -> list[tuple[uuid.UUID, str]]:
    rows = await conn.fetch(
        """
        SELECT c.id, c.state FROM campaign_lists cl JOIN campaigns c ON c.id = cl.campaign_id
        WHERE cl.list_id = $1 AND c.state IN ('draft', 'scheduled') ORDER BY c.created_at
        """,
        list_id,
    )
    return [(r["id"], r["state"]) for r in rows]


async def delete_list(conn: Conn, list_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM lists WHERE id = $1", list_id)


async def unknown_voters(
    conn: Conn, org: uuid.UUID, voter_ids: Sequence[int]
) -> list[int]:
    rows = await conn.fetch(
        """
        SELECT i.id FROM unnest($2::bigint[]) AS i(id)
        WHERE NOT EXISTS (SELECT 1 FROM voters v WHERE v.id = i.id AND v.organisation_id = $1)
        ORDER BY i.id
        """,
        org, list(voter_ids),
    )
    return [r["id"] for r in rows]


async def add_members(
    conn: Conn, list_id: uuid.UUID, voter_ids: Sequence[int]
) -> int:
    status = await conn.execute(
        """
        INSERT INTO list_members (list_id, voter_id)
        SELECT $1, i.id FROM unnest($2::bigint[]) AS i(id)
        ON CONFLICT DO NOTHING
        """,
        list_id, list(voter_ids),
    )
    return int(status.split()[-1])


async def remove_members(
    conn: Conn, list_id: uuid.UUID, voter_ids: Sequence[int]
) -> int:
    status = await conn.execute(
        "DELETE FROM list_members WHERE list_id = $1 AND voter_id = ANY($2::bigint[])",
        list_id, list(voter_ids),
    )
    return int(status.split()[-1])


async def members_page(
    conn: Conn, list_id: uuid.UUID, after_id: int, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""
        SELECT {_VOTER_COLUMNS} FROM list_members m JOIN voters v ON v.id = m.voter_id
        WHERE m.list_id = $1 AND m.voter_id > $2 ORDER BY m.voter_id LIMIT $3
        """,
        list_id, after_id, limit,
    )


# --- campaigns targeting lists --------------------------------------------------------------

async def unknown_lists(
    conn: Conn, org: uuid.UUID, list_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    rows = await conn.fetch(
        """
        SELECT i.id FROM unnest($2::uuid[]) AS i(id)
        WHERE NOT EXISTS (SELECT 1 FROM lists l WHERE l.id = i.id AND l.organisation_id = $1)
        """,
        org, list(list_ids),
    )
    return [r["id"] for r in rows]


async def target_lists(
    conn: Conn, campaign_id: uuid.UUID, list_ids: Sequence[uuid.UUID]
) -> None:
    await conn.execute(
        """
        INSERT INTO campaign_lists (campaign_id, list_id)
        SELECT $1, i.id FROM unnest($2::uuid[]) AS i(id)
        ON CONFLICT DO NOTHING
        """,
        campaign_id, list(list_ids),
    )


async def untarget_list(
    conn: Conn, campaign_id: uuid.UUID, list_id: uuid.UUID
) -> bool:
    status = await conn.execute(
        "DELETE FROM campaign_lists WHERE campaign_id = $1 AND list_id = $2", campaign_id, list_id
    )
    return status == "DELETE 1"


async def lists_of_campaign(
    conn: Conn, campaign_id: uuid.UUID
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""
        SELECT {_LIST_COLUMNS} FROM campaign_lists cl JOIN lists l ON l.id = cl.list_id
        WHERE cl.campaign_id = $1 ORDER BY l.name
        """,
        campaign_id,
    )


async def snapshot_lists_into_recipients(conn: Conn, campaign_id: uuid.UUID) -> int:
    """Copy the voters of the campaign's lists into its recipients, once per voter.

    Called in the transaction that moves the campaign to `sending`, before its total is
    counted: from then on the campaign sends to these copies, whatever happens to the voters.
    Idempotent (the unique (voter_id, campaign_id) index). Returns how many were copied.
    """
    for attempt in range(1, _MAX_SNAPSHOT_ATTEMPTS + 1):
        try:
            # A savepoint: a voter deleted between this statement's snapshot and its foreign
            # key check fails the statement; run it again without that voter.
            async with conn.transaction():
                status = await conn.execute(
                    """
                    INSERT INTO recipients (campaign_id, voter_id, email, phone, first_name,
                                            last_name, attributes)
                    SELECT $1, v.id, v.email, v.phone, v.first_name, v.last_name,
                           v.attributes || jsonb_strip_nulls(
                               jsonb_build_object('preferred_language', v.preferred_language))
                    FROM voters v
                    WHERE v.id IN (
                        SELECT m.voter_id
                        FROM campaign_lists cl JOIN list_members m ON m.list_id = cl.list_id
                        WHERE cl.campaign_id = $1
                    )
                    ORDER BY v.id
                    ON CONFLICT (voter_id, campaign_id) WHERE voter_id IS NOT NULL DO NOTHING
                    """,
                    campaign_id,
                )
            return int(status.split()[-1])
        except asyncpg.ForeignKeyViolationError:
            if attempt == _MAX_SNAPSHOT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")
