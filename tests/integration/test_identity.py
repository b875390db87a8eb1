"""The tracker's copy of the API tokens (from sendout.identity.v1), on real PostgreSQL."""

from __future__ import annotations

import secrets
import uuid

import asyncpg
import pytest
from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials

from services.tracker import identity
from shared.auth import Principal, hash_token
from shared.events import IDENTITY, ApiTokenIssued, ApiTokenRevoked

pytestmark = pytest.mark.integration


def _token() -> tuple[str, str]:
    token = "so_" + secrets.token_urlsafe(16)
    return token, hash_token(token).hex()


async def _caller(pool: asyncpg.Pool, token: str) -> Principal | None:
    check = identity.require_user(pool)
    try:
        return await check(HTTPAuthorizationCredentials(scheme="Bearer", credentials=token))
    except HTTPException as exc:
        assert exc.status_code == 401
        return None


async def _apply(pool: asyncpg.Pool, *events: ApiTokenIssued | ApiTokenRevoked) -> None:
    # Through the wire form, as the consumer gets them.
    decoded = [IDENTITY.validate_json(e.to_bytes()) for e in events]
    async with pool.acquire() as conn, conn.transaction():
        await identity.apply(conn, decoded)


async def test_an_issued_token_authenticates_its_user_until_revoked_for_good(
    tracker_pool: asyncpg.Pool,
) -> None:
    token, token_hash = _token()
    user, org = uuid.uuid4(), uuid.uuid4()
    issued = ApiTokenIssued(token_hash=token_hash, user_id=user, organisation_id=org,
                            user_name="ada")
    assert await _caller(tracker_pool, token) is None
    await _apply(tracker_pool, issued, issued)  # redelivered: no harm
    assert await _caller(tracker_pool, token) == Principal(user, org, "ada")
    assert await _caller(tracker_pool, token + "x") is None

    revoked = ApiTokenRevoked(token_hash=token_hash, user_id=user, organisation_id=org)
    await _apply(tracker_pool, revoked)
    assert await _caller(tracker_pool, token) is None
    # The scheduler re-announces every token at start; an old "issued" replayed after the
    # revocation does not bring the token back.
    await _apply(tracker_pool, issued)
    assert await _caller(tracker_pool, token) is None


async def test_a_campaign_is_its_organisations_only(tracker_pool: asyncpg.Pool) -> None:
    cid, org = uuid.uuid4(), uuid.uuid4()
    await tracker_pool.execute(
        "INSERT INTO campaigns (campaign_id, started, organisation_id) VALUES ($1, true, $2)",
        cid, org)
    async with tracker_pool.acquire() as conn:
        assert await identity.campaign_is_theirs(conn, cid, Principal(uuid.uuid4(), org, "a"))
        assert not await identity.campaign_is_theirs(
            conn, cid, Principal(uuid.uuid4(), uuid.uuid4(), "b"))


def test_a_token_hash_must_be_a_sha256_hex() -> None:
    with pytest.raises(ValueError):
        ApiTokenIssued(token_hash="so_plaintext", user_id=uuid.uuid4(),
                       organisation_id=uuid.uuid4(), user_name="x")
