"""OpenAPI documents that say which errors an operation answers, with their bodies.

FastAPI documents a route's success answer and, for routes with parameters, a 422 whose body
(`HTTPValidationError`) is not what our domain errors answer. `install(app, ...)` completes
every operation of the generated document with the error answers the service really gives:

- 401 `Error`: operations behind the bearer scheme, the admin token or a webhook signature;
- 404 `Error`: operations with a path parameter (an id that is not the caller's is not found),
  and the /admin routes (404 while administration is disabled);
- 409 `Conflict`: the operations the service names (a campaign in the wrong state);
- 413 `Error`: every operation that takes a body (each has a size limit, shared/http_input.py);
- 422 `Invalid`: every operation (the input guard refuses NUL characters in any path or query,
  whatever the route's parameters); FastAPI's validation list and the domain's message with
  its `errors` (e.g. CSV rows by line) are both this one shape;
- and the few others a service names per operation (`extra`: 400, 403, 429, 503).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field


class Error(BaseModel):
    """An error answer: what is wrong, in words."""

    detail: str


class ValidationItem(BaseModel):
    """One invalid input: where (`loc`), what (`msg`, `type`) and an excerpt of it."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class Invalid(BaseModel):
    """422: the input was refused. `detail` lists each invalid input (request validation), or
    says what is wrong in words, with `errors` naming the items (e.g. CSV rows by line)."""

    detail: str | list[ValidationItem]
    errors: list[dict[str, Any]] = Field(default_factory=list)


class Conflict(BaseModel):
    """409: not in this state. `state` is the campaign's current state; a peer-to-peer
    sender already busy gets `detail: {message, active_campaign}`."""

    detail: str | dict[str, Any]
    state: str | None = None


_WORDS = {
    400: "Malformed request", 401: "Missing, unknown or revoked credentials (or signature)",
    403: "Forbidden", 404: "Not found (or not the caller's organisation's)",
    409: "Conflict with the current state", 413: "Request body larger than this endpoint's limit",
    422: "Invalid input", 429: "Too many attempts", 503: "Not configured",
}
_BODY_METHODS = {"post", "put", "patch", "delete"}

Predicate = Callable[[str, str], bool]


def _never(_method: str, _path: str) -> bool:
    return False


def install(
    app: FastAPI,
    *,
    conflicts: Predicate = _never,
    signed: frozenset[str] = frozenset(),
    extra: Mapping[tuple[str, str], Mapping[int, str]] | None = None,
) -> None:
    """Complete the app's OpenAPI document once it is generated. `conflicts(method, path)`:
    whether the operation may answer 409; `signed`: paths that check a webhook signature
    (401); `extra`: other codes per (METHOD, path), with their descriptions."""
    generate = app.openapi
    done: list[bool] = []

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not done:
            _complete(schema, conflicts, signed, extra or {})
            done.append(True)
        return schema

    # FastAPI's documented way to extend the schema, which mypy sees as replacing a method.
    app.openapi = openapi  # type: ignore[method-assign]


def _error_codes(
    path: str, method: str, op: Mapping[str, Any], conflicts: Predicate, signed: frozenset[str],
    extra: Mapping[tuple[str, str], Mapping[int, str]],
) -> dict[int, str]:
    """The error statuses an operation can answer, each with the schema of its body."""
    codes: dict[int, str] = {422: "Invalid"}
    if (op.get("security") or path.startswith("/admin/") or path in signed):
        codes[401] = "Error"
    if "{" in path or path.startswith("/admin/"):
        codes[404] = "Error"
    if conflicts(method.upper(), path):
        codes[409] = "Conflict"
    if method in _BODY_METHODS:
        codes[413] = "Error"
    for code in extra.get((method.upper(), path), {}):
        codes.setdefault(code, "Error")
    return codes


def _complete(
    schema: dict[str, Any], conflicts: Predicate, signed: frozenset[str],
    extra: Mapping[tuple[str, str], Mapping[int, str]],
) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Error, Invalid, Conflict):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)

    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            codes = _error_codes(path, method, op, conflicts, signed, extra)
            responses = op.setdefault("responses", {})
            for code, body_name in sorted(codes.items()):
                words = extra.get((method.upper(), path), {}).get(code, _WORDS[code])
                responses[str(code)] = {
                    "description": words,
                    "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{body_name}"}}},
                }
