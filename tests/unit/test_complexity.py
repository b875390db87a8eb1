"""No function in services/ or shared/ has a cyclomatic complexity above 10 (radon's measure;
issue 17), unless a one-line `# complexity: <why>` comment stands right above its def — on the
per-message hot paths a call per message costs throughput, so those loops stay inline. ruff's
C901 (pyproject.toml) holds the same line in `./sendout check`; it counts differently (nested
functions in their parent, no `and`/`or`), so the two catch somewhat different functions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from radon.complexity import cc_visit
from radon.visitors import Class, Function

ROOT = Path(__file__).resolve().parents[2]
MAX_COMPLEXITY = 10
REASON = "# complexity:"

def _functions(blocks: list[Function | Class]) -> Iterator[Function]:
    """Every function and method (radon lists methods beside their classes), closures
    included, each measured on its own."""
    for block in blocks:
        if isinstance(block, Class):
            continue
        yield block
        yield from _functions(list(block.closures))


def _has_reason(lines: list[str], def_line: int) -> bool:
    """A `# complexity:` comment with a reason among the comments and decorators right above
    the def (1-based `def_line`)."""
    i = def_line - 2
    while i >= 0 and lines[i].lstrip().startswith(("#", "@")):
        text = lines[i].strip()
        if text.startswith(REASON) and text[len(REASON):].strip():
            return True
        i -= 1
    return False


def too_complex(source: str) -> list[tuple[str, int, int]]:
    """(function, line, complexity) of each function above the limit without a reason."""
    lines = source.splitlines()
    return [
        (f.fullname, f.lineno, f.complexity)
        for f in _functions(cc_visit(source))
        if f.complexity > MAX_COMPLEXITY and not _has_reason(lines, f.lineno)
    ]


def test_a_function_above_10_without_a_reason_is_found_and_one_with_a_reason_is_not() -> None:
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(10))
    source = (
        f"def plain(x):\n{branches}    return -1\n\n"
        f"class C:\n    @staticmethod\n    def method(x):\n"
        + branches.replace("    ", "        ") + "        return -1\n\n"
        f"# complexity: kept inline on purpose\ndef excused(x):\n{branches}    return -1\n"
    )
    assert too_complex(source) == [("plain", 1, 11), ("C.method", 26, 11)]


def test_no_function_in_services_or_shared_is_above_complexity_10_without_a_reason() -> None:
    found = []
    for path in sorted([*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.py")]):
        where = path.relative_to(ROOT).as_posix()
        for name, line, complexity in too_complex(path.read_text()):
            found.append(f"{where}:{line} {name} ({complexity})")
    assert found == [], (
        f"functions above complexity {MAX_COMPLEXITY}: split them, or put a one-line "
        f"'{REASON} <why>' above the def: {found}"
    )
