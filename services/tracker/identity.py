"""Who may read progress: the API tokens the scheduler issued, learnt from
`sendout.identity.v1` (the tracker never calls the scheduler), and the organisation each
campaign belongs to, learnt from its `started` event. The subscriber that keeps the tokens is
entrypoints/kafka.py's `on_identity`."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from shared.auth import LookUp, Principal, bearer
from shared.db import Conn
from shared.events import ApiTokenIssued, ApiTokenRevoked


async def apply(
    conn: Conn, events: Sequence[ApiTokenIssued | ApiTokenRevoked]
) -> None:
    """Upsert each token's latest state, the batch in one pipelined `executemany`. A
    revocation wins over any later re-issue of the same hash (the scheduler never re-issues
    one), so replays cannot revive a token."""
    if not events:
        return
    await conn.executemany(
        """
        INSERT INTO api_tokens AS t (token_hash, user_id, organisation_id, user_name,
                                     revoked_at)
        VALUES ($1, $2, $3, coalesce($4, ''), $5)
        ON CONFLICT (token_hash) DO UPDATE
        SET revoked_at = coalesce(t.revoked_at, excluded.revoked_at),
            user_name = coalesce($4, t.user_name),
            updated_at = now()
        """,
        [
            (bytes.fromhex(e.token_hash), e.user_id, e.organisation_id,
             e.user_name if isinstance(e, ApiTokenIssued) else None,
             e.occurred_at if isinstance(e, ApiTokenRevoked) else None)
            for e in events
        ],
    )


def look_up(pool: asyncpg.Pool) -> LookUp:
    """The user a token hash names, while the token is not revoked."""

    async def principal(token_hash: bytes) -> Principal | None:
        row = await pool.fetchrow(
            "SELECT user_id, organisation_id, user_name FROM api_tokens "
            "WHERE token_hash = $1 AND revoked_at IS NULL",
            token_hash,
        )
        return Principal(row["user_id"], row["organisation_id"], row["user_name"]) if row else None

    return principal


def require_user(pool: asyncpg.Pool) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the caller, or 401 with what is wrong."""
    return bearer(look_up(pool))


async def campaign_is_theirs(
    conn: Conn, campaign_id: uuid.UUID, principal: Principal
) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM campaigns WHERE campaign_id = $1 AND organisation_id = $2)",
        campaign_id, principal.organisation_id,
    ))
