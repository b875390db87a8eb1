"""SQL of the rooms that moved into the target shape (identity, content, opt-outs), as asyncpg
repositories
on one connection: the unit of work's (adapters/uow.py), or a caller's. The campaigns' and
voters' SQL is still services/scheduler/repo.py and voters/repo.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from services.scheduler.content.model import Sender, SenderIn, TemplateIn, TemplateVersion
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


class AsyncpgContent:
    """Senders and templates (with their versions), and their read views."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def add_sender(self, sender: SenderIn, organisation_id: uuid.UUID) -> Sender:
        sender_id = uuid.uuid4()
        await self._conn.execute(
            "INSERT INTO senders (id, name, email, sms_sender_id, organisation_id) "
            "VALUES ($1, $2, $3, $4, $5)",
            sender_id, sender.name, sender.email, sender.sms_sender_id, organisation_id,
        )
        return Sender(sender_id, sender.name, sender.email, sender.sms_sender_id)

    async def sender(self, sender_id: uuid.UUID, organisation_id: uuid.UUID) -> Sender | None:
        row = await self._conn.fetchrow(
            "SELECT id, name, email, sms_sender_id FROM senders "
            "WHERE id = $1 AND organisation_id = $2", sender_id, organisation_id,
        )
        return Sender(row["id"], row["name"], row["email"], row["sms_sender_id"]) if row else None

    async def add_template(
        self, template: TemplateIn, organisation_id: uuid.UUID
    ) -> TemplateVersion:
        template_id = uuid.uuid4()
        await self._conn.execute(
            "INSERT INTO templates (id, name, organisation_id) VALUES ($1, $2, $3)",
            template_id, template.name, organisation_id)
        return await self.add_template_version(template_id, template)

    async def add_template_version(
        self, template_id: uuid.UUID, template: TemplateIn
    ) -> TemplateVersion:
        row = await self._conn.fetchrow(
            """
            INSERT INTO template_versions (template_id, version, email_subject, email_body,
                                           sms_body)
            SELECT $1, coalesce(max(version), 0) + 1, $2, $3, $4
            FROM template_versions WHERE template_id = $1
            RETURNING version
            """,
            template_id, template.email_subject, template.email_body, template.sms_body,
        )
        assert row is not None  # INSERT ... SELECT of an aggregate: always one row
        await self._conn.execute("UPDATE templates SET name = $2 WHERE id = $1",
                                 template_id, template.name)
        return TemplateVersion(template_id, row["version"], template.email_subject,
                               template.email_body, template.sms_body)

    async def latest_template(
        self, template_id: uuid.UUID, organisation_id: uuid.UUID
    ) -> TemplateVersion | None:
        row = await self._conn.fetchrow(
            """
            SELECT v.template_id, v.version, v.email_subject, v.email_body, v.sms_body
            FROM template_versions v JOIN templates t ON t.id = v.template_id
            WHERE v.template_id = $1 AND t.organisation_id = $2
            ORDER BY v.version DESC LIMIT 1
            """,
            template_id, organisation_id,
        )
        return TemplateVersion(**dict(row)) if row else None

    async def lock_template(self, template_id: uuid.UUID, organisation_id: uuid.UUID) -> bool:
        name: str | None = await self._conn.fetchval(
            "SELECT name FROM templates WHERE id = $1 AND organisation_id = $2 FOR UPDATE",
            template_id, organisation_id,
        )
        return name is not None

    async def senders_of(self, organisation_id: uuid.UUID) -> list[asyncpg.Record]:
        return await self._conn.fetch(
            "SELECT id, name, email, sms_sender_id FROM senders WHERE organisation_id = $1 "
            "ORDER BY created_at DESC LIMIT 1000",
            organisation_id,
        )

    async def templates_of(self, organisation_id: uuid.UUID) -> list[asyncpg.Record]:
        return await self._conn.fetch(
            """
            SELECT DISTINCT ON (t.id) t.id, t.name, v.version, v.email_subject, v.email_body,
                   v.sms_body
            FROM templates t JOIN template_versions v ON v.template_id = t.id
            WHERE t.organisation_id = $1
            ORDER BY t.id, v.version DESC
            LIMIT 1000
            """,
            organisation_id,
        )


class AsyncpgOptOuts:
    """Opted-out addresses, per organisation, and the voters they mark."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def organisation_exists(self, organisation_id: uuid.UUID) -> bool:
        return await AsyncpgIdentity(self._conn).organisation_exists(organisation_id)

    async def add(
        self, organisation_id: uuid.UUID, address: str, source: str, keyword: str | None
    ) -> bool:
        return bool(await self._conn.fetchval(
            """
            INSERT INTO opt_outs (organisation_id, address, source, keyword)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT DO NOTHING RETURNING true
            """,
            organisation_id, address, source, keyword,
        ))

    async def mark_voters(self, organisation_id: uuid.UUID, address: str) -> None:
        await self._conn.execute(
            """
            UPDATE voters SET opted_out = true, opted_out_at = coalesce(opted_out_at, now())
            WHERE organisation_id = $1 AND (phone = $2 OR lower(email) = lower($2))
            """,
            organisation_id, address,
        )

    async def opted_out(
        self, organisation_id: uuid.UUID, addresses: Sequence[str]
    ) -> set[str]:
        rows = await self._conn.fetch(
            "SELECT address FROM opt_outs "
            "WHERE organisation_id = $1 AND address = ANY($2::text[])",
            organisation_id, list(addresses),
        )
        return {r["address"] for r in rows}
