"""Test data factories for the voter directory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

CSV_HEADER = "external_id,first_name,last_name,email,phone,preferred_language,ward"
# Danish mobile numbers that phonenumbers accepts as valid: 20100000 up to 20999999.
_PHONE_BASE = 20_100_000


def run_tag() -> str:
    """A prefix that keeps one test's voters apart from every other test's and run's."""
    return uuid.uuid4().hex[:10]


def phone(i: int) -> str:
    return f"+45{_PHONE_BASE + i % 900_000}"


def voter_line(tag: str, i: int) -> str:
    # Phones written as people type them (spaces), so the import must normalise them.
    digits = phone(i)[3:]
    return (f"{tag}-{i},Voter{i},{tag}Family{i % 50},{tag}.v{i}@Example.org,"
            f"{digits[:2]} {digits[2:4]} {digits[4:6]} {digits[6:]},da,Ward{i % 7}")


def bad_line(tag: str, i: int) -> tuple[str, str]:
    """A row the import must reject, and (part of) the message it must give."""
    kind = i % 4
    if kind == 0:
        return f"{tag}-{i},Bad{i},X,not-an-email,,da,W", "invalid email"
    if kind == 1:
        return f"{tag}-{i},Bad{i},X,,12,da,W", "invalid phone"
    if kind == 2:
        return f",Bad{i},X,,,da,W", "needs an external_id, an email or a phone"
    return f"{tag}-{i},Bad{i},X,b{i}@example.org,,da,W,extra", "more fields than the header has"


def voters_csv(
    tag: str, n: int, *, bad_every: int | None = None, start: int = 0
) -> tuple[bytes, dict[int, str]]:
    """CSV of voters `start`..`start + n - 1`; every `bad_every`-th row is bad instead.

    Returns the body and {line number: expected error} for the bad rows.
    """
    lines = [CSV_HEADER]
    bad: dict[int, str] = {}
    for i in range(start, start + n):
        if bad_every and i % bad_every == bad_every - 1:
            line, error = bad_line(tag, i)
            bad[len(lines) + 1] = error
            lines.append(line)
        else:
            lines.append(voter_line(tag, i))
    return ("\n".join(lines) + "\n").encode(), bad


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A request body as the HTTP server hands it over: in chunks."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def voter_payload(tag: str, i: int = 0, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "external_id": f"{tag}-{i}",
        "first_name": f"Voter{i}",
        "last_name": f"{tag}Family",
        "email": f"{tag}.v{i}@example.org",
        "phone": phone(i),
        "preferred_language": "da",
        "attributes": {"ward": f"Ward{i % 7}"},
    }
    payload.update(overrides)
    return payload
