"""A campaign's recipients from CSV, streamed: the voter import's incremental parser
(`IncrementalCsv`), rows validated and normalised as they arrive, off the event loop."""

from __future__ import annotations

from services.scheduler.domain import Invalid, Recipient, RecipientRow, to_row
from services.scheduler.voters.domain import IncrementalCsv

KNOWN_COLUMNS = ("email", "phone", "first_name", "last_name")


class RecipientsCsv(IncrementalCsv[RecipientRow]):
    """Header: email, phone, first_name, last_name (at least one); any other column is a
    template attribute. A row whose fields are refused (NUL, too long, more fields than the
    header) is listed by line; addresses that do not validate are kept, flagged invalid (they
    are skipped as `invalid_address` at send time), as JSON recipients are."""

    def __init__(self, region: str) -> None:
        super().__init__()
        self._region = region
        self._known: list[tuple[str, int]] = []
        self._attributes: list[tuple[str, int]] = []

    def _read_header(self, fields: list[str]) -> None:
        names = [f.strip() for f in fields]
        if not any(names):
            raise Invalid("CSV header is empty")
        duplicates = sorted({n for n in names if n and names.count(n) > 1})
        if duplicates:
            raise Invalid(f"CSV header names a column twice: {duplicates}")
        if not set(KNOWN_COLUMNS) & set(names):
            raise Invalid(f"CSV header must name at least one of {sorted(KNOWN_COLUMNS)}")
        self._header = names
        self._known = [(n, i) for i, n in enumerate(names) if n in KNOWN_COLUMNS]
        self._attributes = [(n, i) for i, n in enumerate(names) if n and n not in KNOWN_COLUMNS]

    def _row(self, fields: list[str], line: int) -> RecipientRow | None:
        if not self._checked_fields(fields, line):
            return None
        width = len(fields)
        try:
            recipient = Recipient(
                **{name: fields[i] if i < width else None for name, i in self._known},
                attributes={name: fields[i].strip() if i < width else ""
                            for name, i in self._attributes},
            )
        except ValueError as exc:
            self.reject(line, _first_error(exc))
            return None
        return to_row(recipient, self._region)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc)
