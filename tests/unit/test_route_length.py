"""Route functions stay small (issue 17): parse the request, call the use case, answer. What
they need beyond that lives in named helpers next to them."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"
MAX_LINES = 25
HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "api_route"}


def _routes() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)
                   and d.func.attr in HTTP_METHODS for d in node.decorator_list):
                assert node.end_lineno is not None
                found.append((f"{path.relative_to(SERVICES)}:{node.lineno}", node.name,
                              node.end_lineno - node.lineno + 1))
    return found


def test_every_service_has_routes_found_by_this_check() -> None:
    files = {where.split("/")[0] for where, _, _ in _routes()}
    assert {"scheduler", "tracker", "console"} <= files


def test_no_route_function_is_longer_than_25_lines() -> None:
    long = [(where, name, lines) for where, name, lines in _routes() if lines > MAX_LINES]
    assert long == [], f"route functions over {MAX_LINES} lines: {long}"
