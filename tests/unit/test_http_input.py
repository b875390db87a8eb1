"""The shared input guard (shared/http_input.py) on a small app, without a network or a
database: size limits before the body is read and before authentication, unstorable text
refused with where it is, 422 answers that never echo more than an excerpt."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field

from shared import http_input
from shared.http_input import After, BigId, BodyLimit
from shared.text import check_text, excerpt, spreadsheet_safe, text_problem


class Thing(BaseModel):
    name: str = Field(max_length=10)
    tags: dict[str, Any] = {}


def _app(seen: dict[str, int]) -> FastAPI:
    app = FastAPI()

    async def user(authorization: str | None = Header(default=None)) -> str:
        seen["auth"] = seen.get("auth", 0) + 1
        if authorization != "Bearer ok":
            raise HTTPException(401, "token required")
        return "ok"

    @app.post("/things")
    async def things(thing: Thing, who: str = Depends(user)) -> dict[str, Any]:
        return thing.model_dump()

    @app.post("/upload")
    async def upload(request: Request, who: str = Depends(user)) -> dict[str, int]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"size": size}

    @app.get("/things/{thing_id}")
    async def thing(thing_id: BigId, after: After = 0, q: str | None = None) -> dict[str, Any]:
        return {"id": thing_id, "after": after, "q": q}

    @app.get("/database-refuses")
    async def database_refuses() -> None:
        raise asyncpg.exceptions.DataError(
            "invalid input for query argument $1: 9223372036854775808 (value out of int64 range)")

    http_input.install(app, [BodyLimit("POST", "/upload", 1000)], default_limit=500)
    return app


@pytest.fixture
def seen() -> dict[str, int]:
    return {}


@pytest.fixture
async def client(seen: dict[str, int]) -> Any:
    transport = httpx.ASGITransport(app=_app(seen))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def test_a_body_over_the_limit_is_refused_before_authentication(
    client: httpx.AsyncClient, seen: dict[str, int]
) -> None:
    r = await client.post("/things", content=b"x" * 501,
                          headers={"content-type": "application/json"})
    assert r.status_code == 413 and "500 bytes" in r.text
    r = await client.post("/upload", content=b"x" * 1001)
    assert r.status_code == 413 and "1000 bytes" in r.text
    assert seen == {}  # the token was never looked at: refused from Content-Length


async def test_a_streamed_body_without_length_is_cut_at_the_limit(
    client: httpx.AsyncClient,
) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b"y" * 100

    r = await client.post("/upload", content=chunks(), headers={"Authorization": "Bearer ok"})
    assert r.status_code == 413
    r = await client.post("/upload", content=b"y" * 1000, headers={"Authorization": "Bearer ok"})
    assert r.json() == {"size": 1000}


@pytest.mark.parametrize(
    ("text", "loc", "why"),
    [
        ('{"name": "a\\u0000"}', ["body", "name"], "NUL"),
        ('{"name": "a", "tags": {"k": ["x", "\\u0000"]}}', ["body", "tags", "k", 1], "NUL"),
        ('{"name": "a", "tags": {"k\\u0000": 1}}', ["body", "tags", "k\x00"], "NUL"),
        ('{"name": "\\udfff"}', ["body", "name"], "surrogate"),
    ],
)
async def test_unstorable_text_in_json_is_refused_naming_where(
    client: httpx.AsyncClient, text: str, loc: list[Any], why: str
) -> None:
    r = await client.post("/things", content=text.encode(),
                          headers={"content-type": "application/json",
                                   "Authorization": "Bearer ok"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc and why in r.json()["detail"][0]["msg"]


async def test_escaped_backslashes_are_not_taken_for_a_nul(client: httpx.AsyncClient) -> None:
    r = await client.post("/things", content=b'{"name": "a\\\\u0000"}',
                          headers={"content-type": "application/json",
                                   "Authorization": "Bearer ok"})
    assert r.status_code == 200 and r.json()["name"] == "a\\u0000"


async def test_nul_in_a_query_parameter_or_path_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.get("/things/1", params={"q": "a\0b"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "q"]
    assert (await client.get("/things/1%00")).status_code == 422


async def test_ids_beyond_bigint_are_422(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/things/{2**63}")).status_code == 422
    assert (await client.get(f"/things/1?after={2**63}")).status_code == 422
    assert (await client.get(f"/things/{2**63 - 1}?after={2**63 - 1}")).status_code == 200


async def test_a_422_echoes_only_an_excerpt_of_a_long_value(client: httpx.AsyncClient) -> None:
    r = await client.post("/things", json={"name": "n" * 400},
                          headers={"Authorization": "Bearer ok"})
    assert r.status_code == 422
    assert len(r.content) < 1000 and "(400 characters)" in r.text


def test_text_rules() -> None:
    assert text_problem("ok æøå 🙂") is None
    assert "NUL" in (text_problem("\x00") or "")
    assert "surrogate" in (text_problem("\ud800") or "")
    with pytest.raises(ValueError, match="NUL"):
        check_text({"a": ["b", {"c\x00": 1}]})
    assert excerpt("x" * 10) == "x" * 10
    assert excerpt("\ud800") == "\ufffd"
    assert len(excerpt({"k": "v" * 1000})) < 120


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=cmd|'/Ccalc'!A0@example.com", "'=cmd|'/Ccalc'!A0@example.com"),
        ("=1+1@example.com", "'=1+1@example.com"),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(1+1)*cmd|' /C calc'!A0", "'@SUM(1+1)*cmd|' /C calc'!A0"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("+4540000001", "+4540000001"),  # an E.164 phone number is a number, not a formula
        ("-12", "-12"),
        ("voter@example.org", "voter@example.org"),
        ("", ""),
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(cell: str, written: str) -> None:
    assert spreadsheet_safe(cell) == written


async def test_input_the_database_refuses_is_a_422_not_a_500(client: httpx.AsyncClient) -> None:
    r = await client.get("/database-refuses")
    assert r.status_code == 422 and "int64" in r.json()["detail"]
