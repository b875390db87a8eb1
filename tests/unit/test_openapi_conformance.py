"""The conformance check of the fuzz test finds what it is there to find."""

from typing import Any

from tests.openapi_conformance import answer_errors, schema_errors


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SPEC: dict[str, Any] = {
    "components": {"schemas": {
        "Error": {"type": "object", "properties": {"detail": {"type": "string"}},
                  "required": ["detail"]},
        "Item": {"type": "object", "properties": {"id": {"type": "integer"},
                                                  "tags": {"type": "array",
                                                           "items": {"type": "string"}}},
                 "required": ["id"], "additionalProperties": False},
    }},
    "paths": {"/things/{id}": {"get": {"responses": {
        "200": {"content": {"application/json": {"schema": _ref("Item")}}},
        "404": {"content": {"application/json": {"schema": _ref("Error")}}},
        "204": {"description": "nothing"},
    }}}},
}


def test_a_conforming_answer_has_no_errors() -> None:
    assert answer_errors(SPEC, "GET", "/things/{id}", 200, "application/json",
                         b'{"id": 1, "tags": ["a"]}') == []
    assert answer_errors(SPEC, "GET", "/things/{id}", 404, "application/json; charset=utf-8",
                         b'{"detail": "no"}') == []
    assert answer_errors(SPEC, "GET", "/things/{id}", 204, None, b"") == []


def test_undocumented_status_content_type_and_body_are_found() -> None:
    assert "409 is not documented" in answer_errors(
        SPEC, "GET", "/things/{id}", 409, "application/json", b"{}")[0]
    assert "content type 'text/plain'" in answer_errors(
        SPEC, "GET", "/things/{id}", 200, "text/plain", b"x")[0]
    assert answer_errors(SPEC, "GET", "/things/{id}", 404, "application/json",
                         b'{"detail": ["a list"]}') == ["status 404: $.detail: list is not string"]
    problems = answer_errors(SPEC, "GET", "/things/{id}", 200, "application/json",
                             b'{"id": true, "tags": [1], "x": 0}')
    assert problems == ["status 200: $.id: bool is not integer",
                        "status 200: $.tags[0]: int is not string",
                        "status 200: $.x: no value allowed"]


def test_alternatives_and_enums() -> None:
    schema = {"anyOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "null"}]}
    assert schema_errors(SPEC, schema, "a") == [] and schema_errors(SPEC, schema, None) == []
    assert schema_errors(SPEC, schema, "c") == ["$: fits none of 2 alternatives"]
