"""Hostile and messy input, refused once at the edge of every HTTP service.

`install(app, limits)` adds:
- a request size limit per route (`BodyLimit`), enforced from `Content-Length` before a byte
  of the body is read (so before any authentication work), and while a body without one is
  streamed: 413 naming the limit;
- text PostgreSQL cannot store refused as 422 naming where it is: a NUL character in the path,
  a query parameter or any string (key or value) of a JSON body, and lone UTF-16 surrogates
  (`"\\ud800"`) in a JSON body;
- 422 answers that echo at most a short excerpt of the input (`excerpt`), whatever its size;
- a last line of defence: input the database refuses (asyncpg's DataError: an out-of-range
  integer, an unstorable character) answers 422, not 500.

Integers bound for a BIGINT column are range-checked where they are declared: `BigId` for a
path parameter and `After` for a cursor (out of range: 422).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

import asyncpg
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.text import INT64_MAX, excerpt, text_problem

__all__ = ["INT64_MAX", "After", "BigId", "BodyLimit", "excerpt", "install"]

DEFAULT_BODY_LIMIT = 1024 * 1024

log = logging.getLogger(__name__)

# An id bound for a BIGINT column: out of its range is 422, not a database error.
BigId = Annotated[int, Path(ge=-INT64_MAX - 1, le=INT64_MAX)]
After = Annotated[int, Query(ge=0, le=INT64_MAX, description="id to continue after")]

def _json_problems(value: Any, loc: tuple[str | int, ...]) -> Iterator[dict[str, Any]]:
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            yield {"type": "string_unstorable", "loc": list(loc), "msg": f"text {problem}",
                   "input": excerpt(value)}
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = text_problem(key)
            if problem:
                yield {"type": "string_unstorable", "loc": [*loc, excerpt(key)],
                       "msg": f"a key {problem}", "input": excerpt(key)}
            yield from _json_problems(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _json_problems(item, (*loc, index))


def json_body_problems(body: bytes) -> list[dict[str, Any]]:
    """NUL characters and lone surrogates in a JSON body, each with where it is. Only escapes
    can put them there (raw control characters are not valid JSON), so a body without `\\u`
    is not parsed here at all."""
    if b"\\u" not in body:
        return []
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []  # FastAPI answers malformed JSON itself
    return list(_json_problems(value, ("body",)))[:20]


def query_problems(scope: Scope) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    path = scope.get("path", "")
    problem = text_problem(path)
    if problem:
        problems.append({"type": "string_unstorable", "loc": ["path"],
                         "msg": f"the path {problem}", "input": excerpt(path)})
    raw = scope.get("query_string", b"")
    if raw and (b"%00" in raw or b"\x00" in raw):
        for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
            for text in (key, value):
                problem = text_problem(text)
                if problem:
                    problems.append({"type": "string_unstorable",
                                     "loc": ["query", excerpt(key)],
                                     "msg": f"query parameter {problem}",
                                     "input": excerpt(value)})
                    break
    return problems


@dataclass(frozen=True)
class BodyLimit:
    """At most `max_bytes` of body for requests whose method is `method` and whose path
    matches `path` (a regular expression matched in full). `authenticate_first`: the caller's
    credentials are checked (the guard's `authenticate`) before any of the body is read — for
    routes whose limit is large."""

    method: str
    path: str
    max_bytes: int
    authenticate_first: bool = False

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.fullmatch(self.path, path) is not None


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (this endpoint's limit)",
                         headers={"Connection": "close"})
        self.limit = limit


class UnstorableText(HTTPException):
    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(422, problems)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"request body larger than {limit} bytes (this endpoint's limit)"},
        status_code=413, headers={"Connection": "close"})


# Whether a request's credentials are good, from its scope (headers): a cheap look-up.
Authenticate = Callable[[Scope], Awaitable[bool]]


class InputGuard:
    """Pure ASGI middleware: size limits and unstorable text, as the body is read.

    The body is not read here: `receive` is wrapped, so a route that refuses a request before
    reading its body (a webhook checking its signature headers first, a route authenticating
    its caller) never reads it. A body over the limit by its Content-Length is refused before
    the route runs; one without it when it passes the limit (413). A JSON body is checked
    for unstorable text once complete, before the route sees it (422)."""

    def __init__(self, app: ASGIApp, limits: Sequence[BodyLimit] = (),
                 default_limit: int = DEFAULT_BODY_LIMIT,
                 authenticate: Authenticate | None = None) -> None:
        self.app = app
        self.limits = tuple(limits)
        self.default = BodyLimit("*", ".*", default_limit)
        self.authenticate = authenticate

    def limit_for(self, method: str, path: str) -> BodyLimit:
        for limit in self.limits:
            if limit.matches(method, path):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problems = query_problems(scope)
        if problems:
            await JSONResponse({"detail": problems}, status_code=422)(scope, receive, send)
            return
        method = scope["method"]
        if method in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(method, scope["path"])
        headers = dict(scope.get("headers") or [])
        refusal = _declared_length_refusal(headers.get(b"content-length"), limit)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if limit.authenticate_first and self.authenticate and not await self.authenticate(scope):
            await JSONResponse({"detail": "an API token is required: Authorization: Bearer "
                                          "<token> (checked before the body is read)"},
                               status_code=401, headers={"WWW-Authenticate": "Bearer"}
                               )(scope, receive, send)
            return
        is_json = headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json"
        await self.app(scope, _guarded(receive, limit.max_bytes, check_json=is_json), send)


def _declared_length_refusal(declared: bytes | None, limit: BodyLimit) -> JSONResponse | None:
    """The answer to a Content-Length that is no number or over the limit; None: go on."""
    if declared is None:
        return None
    try:
        too_big = int(declared) > limit.max_bytes
    except ValueError:
        return JSONResponse({"detail": "Content-Length must be a number"}, status_code=400)
    return _too_large(limit.max_bytes) if too_big else None


def _guarded(receive: Receive, limit: int, *, check_json: bool) -> Receive:
    size = 0
    chunks: list[bytes] = []

    async def guarded() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            if check_json:
                chunks.append(chunk)
                if not message.get("more_body", False):
                    problems = json_body_problems(b"".join(chunks))
                    chunks.clear()
                    if problems:
                        raise UnstorableText(problems)
        return message

    return guarded


def _truncated_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for error in list(errors)[:50]:
        error = dict(error)
        if "input" in error:
            error["input"] = excerpt(error["input"])
        if "ctx" in error:
            error["ctx"] = {k: excerpt(str(v)) for k, v in error["ctx"].items()}
        error.pop("url", None)
        out.append(error)
    return out


def validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic errors as a 422 answer carries them: inputs cut to an excerpt."""
    return _truncated_errors(errors)


Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]


def install(app: FastAPI, limits: Sequence[BodyLimit] = (),
            default_limit: int = DEFAULT_BODY_LIMIT,
            authenticate: Authenticate | None = None) -> None:
    app.add_middleware(InputGuard, limits=limits, default_limit=default_limit,
                       authenticate=authenticate)

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _truncated_errors(exc.errors())}, status_code=422)


    async def unstorable(request: Request, exc: Exception) -> JSONResponse:
        # The last line of defence: logged (without the value), so that a route missing its
        # validation shows. asyncpg names the offending argument and repeats part of its value.
        log.warning("input refused by the database", extra={
            "method": request.method, "route": request.url.path[:200],
            "error_type": type(exc).__name__})
        return JSONResponse(
            {"detail": f"invalid input: {excerpt(str(exc).splitlines()[0], 200)}"},
            status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(asyncpg.DataError, unstorable)
