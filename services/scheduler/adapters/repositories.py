"""SQL of the rooms that moved into the target shape (identity, ...), as asyncpg repositories
on one connection: the unit of work's (adapters/uow.py), or a caller's. The campaigns' and
voters' SQL is still services/scheduler/repo.py and voters/repo.py."""

from __future__ import annotations

import uuid

from services.scheduler.identity.model import SigningIn, StoredToken
from shared.auth import Principal
from shared.db import Conn


class AsyncpgIdentity:
    """Organisations, users, their passwords and API tokens."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def organisation_exists(self, organisation_id: uuid.UUID) -> bool:
        return bool(await self._conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM organisations WHERE id = $1)", organisation_id))

    async def ensure_organisation(self, name: str) -> uuid.UUID:
        found: uuid.UUID = await self._conn.fetchval(
            """
            WITH ins AS (
                INSERT INTO organisations (id, name) VALUES (gen_random_uuid(), $1)
                ON CONFLICT (name) DO NOTHING RETURNING id
            )
            SELECT id FROM ins UNION ALL SELECT id FROM organisations WHERE name = $1 LIMIT 1
            """,
            name,
        )
        return found

    async def upsert_user(self, organisation_id: uuid.UUID, name: str) -> uuid.UUID:
        found: uuid.UUID = await self._conn.fetchval(
            """
            INSERT INTO users (id, organisation_id, name) VALUES (gen_random_uuid(), $1, $2)
            ON CONFLICT (organisation_id, name) DO UPDATE SET name = excluded.name
            RETURNING id
            """,
            organisation_id, name,
        )
        return found

    async def get_user(self, user_id: uuid.UUID) -> Principal | None:
        row = await self._conn.fetchrow(
            "SELECT id, organisation_id, name FROM users WHERE id = $1 FOR UPDATE", user_id
        )
        return Principal(row["id"], row["organisation_id"], row["name"]) if row else None

    async def password_hash(self, user_id: uuid.UUID) -> str | None:
        found: str | None = await self._conn.fetchval(
            "SELECT password_hash FROM users WHERE id = $1", user_id)
        return found

    async def set_password(
        self, user_id: uuid.UUID, password_hash: str, email: str | None = None
    ) -> None:
        await self._conn.execute(
            "UPDATE users SET password_hash = $2, password_set_at = now(), "
            "email = coalesce($3, email) WHERE id = $1",
            user_id, password_hash, email,
        )

    async def signing_in(self, login: str) -> list[SigningIn]:
        rows = await self._conn.fetch(
            """
            SELECT u.id, u.organisation_id, u.name, u.password_hash, o.name AS organisation
            FROM users u JOIN organisations o ON o.id = u.organisation_id
            WHERE u.password_hash IS NOT NULL AND (lower(u.email) = lower($1) OR u.name = $1)
            ORDER BY u.created_at LIMIT 10
            """,
            login,
        )
        return [SigningIn(Principal(r["id"], r["organisation_id"], r["name"]),
                          r["organisation"], r["password_hash"]) for r in rows]

    async def add_token(self, user_id: uuid.UUID, token_hash: bytes) -> None:
        await self._conn.execute("INSERT INTO api_tokens (token_hash, user_id) VALUES ($1, $2)",
                                 token_hash, user_id)

    async def revoke_tokens(self, user_id: uuid.UUID) -> list[bytes]:
        rows = await self._conn.fetch(
            "UPDATE api_tokens SET revoked_at = now() "
            "WHERE user_id = $1 AND revoked_at IS NULL RETURNING token_hash",
            user_id,
        )
        return [r["token_hash"] for r in rows]

    async def all_tokens(self) -> list[StoredToken]:
        rows = await self._conn.fetch(
            """
            SELECT t.token_hash, t.revoked_at, u.id AS user_id, u.organisation_id, u.name
            FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.created_at
            """
        )
        return [StoredToken(r["token_hash"], r["user_id"], r["organisation_id"], r["name"],
                            r["revoked_at"]) for r in rows]

    async def principal_by_token(self, token_hash: bytes) -> Principal | None:
        """The user of a live token (None: unknown or revoked)."""
        row = await self._conn.fetchrow(
            """
            SELECT u.id AS user_id, u.organisation_id, u.name
            FROM api_tokens t JOIN users u ON u.id = t.user_id
            WHERE t.token_hash = $1 AND t.revoked_at IS NULL
            """,
            token_hash,
        )
        return Principal(row["user_id"], row["organisation_id"], row["name"]) if row else None
