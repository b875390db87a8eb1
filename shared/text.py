"""Text and numbers PostgreSQL cannot store, and excerpts of input fit to repeat in an error.
No I/O: domain models use these as validators."""

from __future__ import annotations

import json
import re
from typing import Any

INT64_MAX = 2**63 - 1
# How much of a refused value an error answer repeats.
EXCERPT_CHARS = 80

_SURROGATE = re.compile("[\\ud800-\\udfff]")


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> Any:
    """`value` as an error answer may repeat it: long text cut to `limit` characters (with
    its full length said), containers summarised."""
    if isinstance(value, str):
        if _SURROGATE.search(value):  # not encodable: shown as U+FFFD
            value = _SURROGATE.sub("\ufffd", value)
        if len(value) <= limit:
            return value
        return f"{value[:limit]}… ({len(value)} characters)"
    if isinstance(value, bytes):
        return excerpt(value.decode("utf-8", "replace"), limit)
    if isinstance(value, dict | list | tuple):
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except ValueError:
            text = repr(value)
        return value if len(text) <= limit else excerpt(text, limit)
    return value


def text_problem(value: str) -> str | None:
    """Why PostgreSQL could not store `value`, or None."""
    if "\x00" in value:
        return "must not contain a NUL character (\\u0000)"
    if _SURROGATE.search(value):
        return "must not contain a lone UTF-16 surrogate (\\ud800-\\udfff)"
    return None


def check_text(value: Any) -> Any:
    """A pydantic `mode="before"` validator body: refuse unstorable text (ValueError)."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise ValueError(problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key)
            check_text(item)
    elif isinstance(value, list):
        for item in value:
            check_text(item)
    return value


# A spreadsheet takes a cell that begins with one of these for a formula (OWASP, "CSV
# Injection"): `=cmd|'/Ccalc'!A0` runs a program in Excel.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A plain signed number (an E.164 phone number, a negative count) is no formula: left as is.
_PLAIN_NUMBER = re.compile(r"^[+-]?[0-9]+(\.[0-9]+)?$")


def spreadsheet_safe(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one beginning with = + - @ tab or CR gets a
    leading apostrophe (OWASP's rule), unless it is a plain number."""
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(text):
        return "'" + text
    return text
