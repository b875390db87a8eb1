"""PostgreSQL plumbing: a pool per service and versioned SQL migrations applied at start.

Each service owns one schema; its migrations are `NNN_name.sql` files applied in order, once,
under an advisory lock so that replicas starting together do not race.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

# What a repository function takes: a connection from `pool.acquire()` (a proxy, as asyncpg's
# types say) or one opened on its own.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy


async def create_pool(
    dsn: str,
    schema: str,
    *,
    max_size: int = 10,
    init: Callable[[asyncpg.Connection], Coroutine[Any, Any, None]] | None = None,
    generic_plans: bool = False,
    session_state: bool = True,
) -> asyncpg.Pool:
    """A pool whose connections see only `schema` (plus `public`) unqualified.

    The search path is a startup parameter rather than a `SET`, because the pool's
    `RESET ALL` on release would undo a `SET`.

    `session_state=False`: the service's code keeps nothing in a connection's session (no
    session advisory lock, `LISTEN`, `SET` or open cursor outside a transaction), so a
    connection given back to the pool is not reset — a round trip saved per use (an open
    transaction is still rolled back). The dispatcher takes a connection per step of its hot
    path: that round trip cost a sixth of its CPU per message, and as much of PostgreSQL's.
    """
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, command_timeout=60, init=init,
        reset=None if session_state else _keep_session,
        # JIT off: these are short statements over few rows each, and a cost estimate over
        # `jit_above_cost` (a batch's join while statistics lag) makes PostgreSQL compile the
        # statement again on every execution — 100+ ms of CPU for a query of milliseconds.
        # Custom plans always: campaigns' sizes are skewed (one of 1M recipients beside many of
        # ten), and once a connection's statement has been planned for the big one, PostgreSQL
        # switches to a generic plan that expects a campaign's rows to be the whole table — a
        # (parallel) sequential scan of `recipients` for every small campaign's lookup.
        # Planning these statements costs microseconds to a millisecond per execution.
        # `generic_plans`: for a service whose hot statements read arrays of keys, not one
        # campaign's rows (the dispatcher's claims and outcomes), PostgreSQL's own choice
        # (a plan cached per connection once it is no worse) — planning its claim statement
        # cost a third as much again as running it.
        server_settings={"search_path": f"{schema}, public", "jit": "off",
                         "plan_cache_mode": "auto" if generic_plans else "force_custom_plan"},
    )
    assert pool is not None
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset (asyncpg has already rolled back an open transaction)."""


def _read_migrations(folder: Path) -> list[tuple[str, str]]:
    # Blocking reads are fine here: a few small files, once, before the service takes traffic.
    return [(p.name, p.read_text()) for p in sorted(folder.glob("*.sql"))]


async def migrate(pool: asyncpg.Pool, schema: str, folder: Path) -> list[str]:
    """Apply the not-yet-applied `*.sql` files of `folder` to `schema`; return their names."""
    lock_key = int.from_bytes(hashlib.sha256(schema.encode()).digest()[:8], "big", signed=True)
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["name"]
                for r in await conn.fetch(f'SELECT name FROM "{schema}".schema_migrations')
            }
            files = _read_migrations(folder)
            for name, sql in files:
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                    await conn.execute(sql)
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations(name) VALUES ($1)', name
                    )
                applied.append(name)
                log.info("migration applied", extra={"schema": schema, "migration": name})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied


async def copy_if_all_new(
    conn: Conn, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> bool:
    """COPY `rows` straight into `table`, in a savepoint; False, and nothing written, if one of
    them is there already (a unique violation).

    For batches whose keys are nearly always new: the rows go in page by page, without the
    speculative insertion per row of `INSERT … ON CONFLICT`. The caller handles the rare batch
    that is not all new the careful way (staged, `ON CONFLICT`).
    """
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(table, records=rows, columns=columns)
    except asyncpg.UniqueViolationError:
        return False
    return True


class Staging:
    """A per-session temporary table, emptied at commit, loaded by binary COPY.

    Bulk statements read their rows from it instead of from array parameters: asyncpg encodes
    an array element by element with abstract-class checks on each, which cost more CPU than
    the rows' own insert; binary COPY encodes each value with its codec only. Use inside a
    transaction (outside one, the rows are gone at once).
    """

    def __init__(self, name: str, columns: dict[str, str]) -> None:
        self.name = name
        self.columns = tuple(columns)
        definition = ", ".join(f"{c} {t}" for c, t in columns.items())
        self._create = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ({definition}) ON COMMIT DELETE ROWS"
        )

    async def load(self, conn: Conn, records: Iterable[tuple[Any, ...]]) -> None:
        # Created on a connection's first use, and again if the transaction that created it
        # was rolled back (`IF NOT EXISTS`: one catalog lookup per batch); emptied, in case this
        # transaction loaded it before.
        await conn.execute(f"{self._create}; DELETE FROM {self.name}")
        await conn.copy_records_to_table(self.name, records=records, columns=self.columns)
