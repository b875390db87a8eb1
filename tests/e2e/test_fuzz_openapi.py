"""Every operation of the scheduler's and the tracker's OpenAPI documents, driven with hostile
input (NUL, lone surrogates, integers beyond 64 bits, huge and odd strings, repeated items)
by a property test with a fixed seed: no answer is a server error, and every answer conforms
to the document (its status code documented for the operation, its content type documented
for that status, its JSON body valid against the documented schema: tests/openapi_conformance.py).

The operations are read from the running services' documents, so an operation added later is
fuzzed without anyone listing it here. Each request carries a valid API token (and the admin
token for /admin routes), so the input reaches the routes behind authentication.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from devtools.processes import Sendout
from tests.e2e.conftest import ADMIN_TOKEN
from tests.openapi_conformance import answer_errors

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 100
# Operations that wait on purpose (an abort waits for dispatchers' acknowledgements) or that
# only answer metrics: their input is still fuzzed, with fewer examples.
SKIP = {("GET", "/metrics"), ("GET", "/health")}

HOSTILE_TEXT = [
    "\x00", "a\x00b", "\ud800", "x\udfffy", "", " ", "é", "🙂", "=cmd|'/Ccalc'!A0",
    "' OR 1=1 --", "%00", "\\u0000", "{{ self }}", "a" * 5000, "\r\n\t", "null",
    str(2**63), "-1", "+4540000000", "x@example.org",
]
HOSTILE_INT = [0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]

texts = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
ints = st.one_of(st.sampled_from(HOSTILE_INT), st.integers())


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _value(spec: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy:
    """Values of (roughly) the schema's shape, made of hostile leaves; sometimes of another
    type altogether."""
    schema = _resolve(spec, schema)
    if depth > 4:
        return st.none()
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return st.one_of([_value(spec, o, depth + 1) for o in options])
    kind = schema.get("type")
    if "enum" in schema:
        shaped: st.SearchStrategy = st.sampled_from(schema["enum"])
    elif kind == "string" and schema.get("format") == "uuid":
        shaped = st.one_of(st.uuids().map(str), texts)
    elif kind == "string":
        shaped = texts
    elif kind == "integer":
        shaped = ints
    elif kind == "number":
        shaped = st.one_of(ints, st.floats(allow_nan=False))
    elif kind == "boolean":
        shaped = st.booleans()
    elif kind == "array":
        item = _value(spec, schema.get("items", {}), depth + 1)
        shaped = st.one_of(st.lists(item, max_size=4),
                           item.map(lambda v: [v, v]))  # a repeated item
    elif kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        extra = schema.get("additionalProperties")
        shaped = st.fixed_dictionaries(
            {k: _value(spec, v, depth + 1) for k, v in props.items() if k in required},
            optional={k: _value(spec, v, depth + 1) for k, v in props.items()
                      if k not in required},
        )
        if extra:
            shaped = st.one_of(shaped, st.dictionaries(texts, texts, max_size=3))
    else:
        shaped = st.one_of(texts, ints, st.none())
    return st.one_of(shaped, shaped, shaped, texts, ints, st.none())


def _operations(base: str) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    spec = httpx.get(f"{base}/openapi.json").raise_for_status().json()
    return [(method.upper(), path, op, spec)
            for path, ops in spec["paths"].items() for method, op in ops.items()
            if (method.upper(), path) not in SKIP]


def _request(spec: dict[str, Any], path: str, op: dict[str, Any]) -> st.SearchStrategy:
    path_params: dict[str, st.SearchStrategy] = {}
    query: dict[str, st.SearchStrategy] = {}
    for p in op.get("parameters", []):
        schema = p.get("schema", {})
        if p["in"] == "path":
            path_params[p["name"]] = st.one_of(
                _value(spec, schema).map(lambda v: v if isinstance(v, str | int) else "x"),
                st.sampled_from([str(2**63), "%00", "-1", str(uuid.uuid4())]))
        elif p["in"] == "query":
            query[p["name"]] = _value(spec, schema).map(
                lambda v: v if isinstance(v, str | int | float | bool) else json.dumps(v))
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        body = _value(spec, content["application/json"]["schema"]).map(
            lambda v: ("json", v))
    elif "text/csv" in content:
        rows = st.lists(st.lists(texts, min_size=1, max_size=4), max_size=4)
        body = rows.map(lambda r: ("csv", "email,phone,first_name,external_id\n" + "\n".join(
            ",".join(cell.replace(",", ";") for cell in row) for row in r)))
    else:
        body = st.just(("none", None))
    return st.tuples(st.fixed_dictionaries(path_params), st.fixed_dictionaries(
        {}, optional=query), body)


def _utf8(value: Any) -> bytes:
    """Text as bytes on the wire, lone surrogates included (as a careless client sends them)."""
    return str(value).encode("utf-8", "surrogatepass")


def _quoted(value: Any) -> str:
    return quote(_utf8(value), safe="")


def _fuzz(sendout: Sendout, base: str, method: str, path: str, op: dict[str, Any],
          spec: dict[str, Any]) -> int:
    """Fuzz one operation; the number of requests sent."""
    sent = [0]

    headers = {**sendout.auth, "X-Sendout-Admin-Token": ADMIN_TOKEN}
    with httpx.Client(timeout=60, headers=headers) as client:

        @seed(15)
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(_request(spec, path, op))
        def run(request: tuple[dict[str, Any], dict[str, Any], tuple[str, Any]]) -> None:
            params, query, (kind, body) = request
            url = base + path.format(**{k: _quoted(v) for k, v in params.items()})
            if query:
                url += "?" + urlencode({k: _utf8(v) for k, v in query.items()})
            kwargs: dict[str, Any] = {}
            if kind == "json":
                # As a client in another language might write it: lone surrogates escaped.
                kwargs["content"] = json.dumps(body).encode()
                kwargs["headers"] = {"content-type": "application/json"}
            elif kind == "csv":
                kwargs["content"] = body.encode("utf-8", "surrogatepass")
                kwargs["headers"] = {"content-type": "text/csv"}
            r = client.request(method, url, **kwargs)
            sent[0] += 1
            assert r.status_code < 500, (method, url, query, body, r.status_code, r.text)
            if any(str(v) == "" for v in params.values()):
                return  # an empty path segment addresses another route (or a redirect to it)
            problems = answer_errors(spec, method, path, r.status_code,
                                     r.headers.get("content-type"), r.content)
            assert not problems, (method, url, query, body, problems, r.text[:300])

        run()
    return sent[0]


def test_no_scheduler_operation_answers_a_server_error_or_off_its_schema(sendout: Sendout) -> None:
    operations = _operations(sendout.scheduler)
    assert len(operations) > 30
    sent = sum(_fuzz(sendout, sendout.scheduler, method, path, op, spec)
               for method, path, op, spec in operations)
    print(f"\nscheduler: {len(operations)} operations, {sent} cases, 0 server errors, "
          "0 schema violations")


def test_no_tracker_operation_answers_a_server_error_or_off_its_schema(sendout: Sendout) -> None:
    operations = _operations(sendout.tracker)
    assert len(operations) >= 5
    sent = sum(_fuzz(sendout, sendout.tracker, method, path, op, spec)
               for method, path, op, spec in operations)
    print(f"\ntracker: {len(operations)} operations, {sent} cases, 0 server errors, "
          "0 schema violations")


# Signed webhooks (their own schemes) and the unauthenticated basics.
PUBLIC = {"/health", "/metrics", "/receipts", "/organisations/{organisation_id}/inbound-sms",
          "/organisations/{organisation_id}/inbound-sms/twilio", "/providers/twilio/status",
          "/auth/sign-in"}


def test_every_protected_operation_documents_the_bearer_scheme(sendout: Sendout) -> None:
    for base in (sendout.scheduler, sendout.tracker):
        spec = httpx.get(f"{base}/openapi.json").raise_for_status().json()
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        protected = [(m, p, op) for p, ops in spec["paths"].items() for m, op in ops.items()
                     if p not in PUBLIC and not p.startswith("/admin/")]
        assert protected
        for method, path, op in protected:
            assert {"bearer": []} in op.get("security", []), (method, path)
            assert not any(p["name"].lower() == "authorization"
                           for p in op.get("parameters", [])), (method, path)


def test_every_operation_documents_its_error_answers_with_their_bodies(sendout: Sendout) -> None:
    """401 behind a token or signature, 404 with an id in the path, 409 where a campaign's
    state can refuse, 413 with a body, 422 everywhere: each with its body's schema."""
    for base in (sendout.scheduler, sendout.tracker):
        spec = httpx.get(f"{base}/openapi.json").raise_for_status().json()
        schemas = spec["components"]["schemas"]
        assert schemas["Error"]["required"] == ["detail"]
        assert "errors" in schemas["Invalid"]["properties"]
        assert "state" in schemas["Conflict"]["properties"]
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                documented = op["responses"]
                body = {code: r["content"]["application/json"]["schema"]["$ref"].rsplit("/")[-1]
                        for code, r in documented.items() if code[0] == "4"}
                assert body.get("422") == "Invalid", (method, path)
                if op.get("security") or path.startswith("/admin/"):
                    assert body.get("401") == "Error", (method, path)
                if "{" in path:
                    assert body.get("404") == "Error", (method, path)
                if method != "get":
                    assert body.get("413") == "Error", (method, path)
    spec = httpx.get(f"{sendout.scheduler}/openapi.json").raise_for_status().json()
    for path in ("/campaigns/{campaign_id}/send-now", "/campaigns/{campaign_id}/recipients.csv",
                 "/campaigns/{campaign_id}/abort", "/campaigns/{campaign_id}/p2p/start"):
        assert "409" in spec["paths"][path]["post"]["responses"], path
    assert "409" not in spec["paths"]["/campaigns/{campaign_id}"]["get"]["responses"]
