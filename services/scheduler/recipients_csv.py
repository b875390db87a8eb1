"""A campaign's recipients from CSV, read by the scheduler's one CSV reader (`IncrementalCsv`,
streamed, off the event loop) and normalised by its one address normaliser, as voters.csv is."""

from __future__ import annotations

from pydantic import ValidationError

from services.scheduler.addresses import normalise_email, normalise_phone
from services.scheduler.csv_reader import IncrementalCsv
from services.scheduler.domain import RECIPIENT_COLUMNS, Recipient, RecipientRow


class RecipientsCsv(IncrementalCsv[RecipientRow]):
    """Header: email, phone, first_name, last_name (at least one); any other column is a
    template attribute. A row is refused, with its line and the reason, if a field cannot be
    stored (NUL, too long, more fields than the header) or an address does not validate (as
    voters.csv refuses it); a row without any address is kept (skipped `missing_address` at
    send time, like a JSON recipient)."""

    COLUMNS = RECIPIENT_COLUMNS
    REQUIRED_ONE_OF = RECIPIENT_COLUMNS

    def __init__(self, region: str) -> None:
        super().__init__()
        self._region = region

    def _row(self, fields: list[str], line: int) -> RecipientRow | None:
        split = self._split(fields, line)
        if split is None:
            return None
        values, attributes = split
        try:
            recipient = Recipient(**values, attributes=attributes)
            email = normalise_email(recipient.email) if recipient.email else None
            phone = normalise_phone(recipient.phone, self._region) if recipient.phone else None
        except ValidationError as exc:
            self.reject(line, _first_error(exc))
            return None
        except ValueError as exc:
            self.reject(line, str(exc))
            return None
        return RecipientRow(email, False, phone, False, recipient.first_name,
                            recipient.last_name, recipient.attributes)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])
