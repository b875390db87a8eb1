"""Does an HTTP answer conform to the service's OpenAPI document? Its status code is documented
for the operation, its content type is one documented for that status, and a JSON body is
valid against the documented schema.

The schema check covers the JSON Schema that FastAPI and pydantic generate: `$ref`, `anyOf`/
`oneOf`/`allOf`, `type` (one or a list), `enum`, `const`, `properties`, `required`,
`additionalProperties`, `items`, `prefixItems`, `minItems`/`maxItems`, `minLength`/
`maxLength`, `minimum`/`maximum`. Formats are not checked.
"""

from __future__ import annotations

import json
from typing import Any

_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def schema_errors(spec: dict[str, Any], schema: dict[str, Any] | bool, value: Any,
                  where: str = "$") -> list[str]:
    """What in `value` does not fit `schema` (empty if it fits)."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{where}: no value allowed"]
    assert isinstance(schema, dict)
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return schema_errors(spec, spec["components"]["schemas"][name], value, where)
    errors: list[str] = []
    for options in (schema.get("anyOf"), schema.get("oneOf")):
        if options and all(schema_errors(spec, o, value, where) for o in options):
            errors.append(f"{where}: fits none of {len(options)} alternatives")
    for part in schema.get("allOf", []):
        errors += schema_errors(spec, part, value, where)
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES[k](value) for k in kinds):
            return [*errors, f"{where}: {type(value).__name__} is not {'/'.join(kinds)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} is not {schema['const']!r}")
    if isinstance(value, str):
        errors += _bounds(schema, "minLength", "maxLength", len(value), where,
                          "shorter than {}", "longer than {}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        errors += _bounds(schema, "minimum", "maximum", value, where, "below {}", "above {}")
    if isinstance(value, list):
        errors += _bounds(schema, "minItems", "maxItems", len(value), where,
                          "fewer than {} items", "more than {} items")
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            item_schema = prefix[i] if i < len(prefix) else schema.get("items", {})
            errors += schema_errors(spec, item_schema, item, f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}: {name!r} is missing")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                errors += schema_errors(spec, props[name], item, f"{where}.{name}")
            else:
                errors += schema_errors(spec, extra, item, f"{where}.{name}")
    return errors


def _bounds(schema: dict[str, Any], low: str, high: str, measure: float, where: str,
            below: str, above: str) -> list[str]:
    """`measure` (a length, a count of items, a number) against the schema's `low` and `high`
    keywords, where it has them; `below` / `above` word the error around the bound."""
    errors: list[str] = []
    if low in schema and measure < schema[low]:
        errors.append(f"{where}: {below.format(schema[low])}")
    if high in schema and measure > schema[high]:
        errors.append(f"{where}: {above.format(schema[high])}")
    return errors


def answer_errors(spec: dict[str, Any], method: str, path: str, status: int,
                  content_type: str | None, body: bytes) -> list[str]:
    """What in an answer to `method path` the document does not say (empty if all of it)."""
    op = spec["paths"][path][method.lower()]
    responses = op.get("responses", {})
    documented = (responses.get(str(status)) or responses.get(f"{status // 100}XX")
                  or responses.get("default"))
    if documented is None:
        return [f"status {status} is not documented (documented: {sorted(responses)})"]
    content = documented.get("content")
    if not content:
        return [] if not body else [f"status {status} has a body but documents none"]
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in content:
        return [f"content type {media or None!r} is not documented for {status} "
                f"(documented: {sorted(content)})"]
    if media != "application/json":
        return []
    try:
        value = json.loads(body)
    except ValueError:
        return [f"status {status}: the body is not JSON"]
    schema = content[media].get("schema", {})
    return [f"status {status}: {e}" for e in schema_errors(spec, schema, value)][:5]
