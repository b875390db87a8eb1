"""Voter directory domain: commands, validation, normalisation and the incremental CSV parser.
No I/O."""

from __future__ import annotations

import codecs
import csv
import functools
import json
import re
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Annotated, Any, Generic, NamedTuple, TypeVar

import charset_normalizer
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.scheduler.domain import Invalid, InvalidTransition
from shared.text import INT64_MAX

# Organisations do not exist yet. Every voter and list is written with this one, so that
# organisations can come later without a data migration.
DEFAULT_ORG = uuid.UUID("00000000-0000-0000-0000-000000000001")

COLUMNS = ("external_id", "first_name", "last_name", "email", "phone", "preferred_language")
# What identifies a voter on upsert, in this order (see voter_match_key in 010_voters.sql).
IDENTITY = ("external_id", "email", "phone")
MAX_LISTED_ERRORS = 100
# A record spanning more physical lines than this is taken for an unterminated quote: its
# first line is rejected and parsing goes on after it, instead of swallowing the file.
MAX_RECORD_LINES = 100
# Campaign states in which a campaign sends nothing more: snapshots may be erased at once.
FINISHED = frozenset({"completed", "aborted"})

_MAX_LENGTH = {
    "external_id": 200, "first_name": 200, "last_name": 200, "email": 320, "phone": 64,
    "preferred_language": 35,
}
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$", re.IGNORECASE)
_PHONE_LIKE = re.compile(r"^\+?[\d\s().-]+$")
# RFC 5322 dot-atom of ASCII characters: what nearly every real address's local part is.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ATOM_LOCAL_PART = re.compile(rf"^{_ATOM}(\.{_ATOM})*$")


class VoterFields(NamedTuple):
    """A voter's fields, validated and normalised (email: domain lower-cased; phone: E.164)."""

    external_id: str | None
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    preferred_language: str | None
    attributes: dict[str, Any]


class ImportRow(NamedTuple):
    """One good CSV row, in the column order of the import's staging table."""

    line: int
    external_id: str | None
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    preferred_language: str | None
    attributes: dict[str, Any]


def normalise_email(value: str) -> str:
    """The address with its domain normalised (lower-cased, IDNA-checked), as email-validator
    has it. A plain ASCII local part takes a fast path: the domain is validated once per
    distinct domain, which halves the cost of an import where most voters share a few."""
    local, at, domain = value.rpartition("@")
    if at and len(local) <= 64 and _ATOM_LOCAL_PART.match(local):
        normalised = f"{local}@{_normalise_domain(domain)}"
        if len(normalised) <= 254:
            return normalised
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email: {exc}") from exc


@functools.lru_cache(maxsize=4096)
def _normalise_domain(domain: str) -> str:
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).domain
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email: {exc}") from exc


def normalise_phone(value: str, region: str) -> str:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"invalid phone: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"invalid phone: not a valid number (default region {region})")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_language(value: str) -> str:
    if not _LANGUAGE.match(value):
        raise ValueError(f"invalid preferred_language {value[:40]!r}: expected e.g. da, en-GB")
    primary, _, rest = value.partition("-")
    return primary.lower() + (f"-{rest}" if rest else "")


def voter_fields(
    values: dict[str, str | None], attributes: dict[str, Any], region: str
) -> VoterFields:
    """Validate and normalise; `values` maps COLUMNS to stripped text or None (blank).

    Raises ValueError naming the first problem.
    """
    for name, value in values.items():
        if value is None:
            continue
        if len(value) > _MAX_LENGTH[name]:
            raise ValueError(f"{name} longer than {_MAX_LENGTH[name]} characters")
        if "\x00" in value:
            raise ValueError(f"{name} contains a NUL character")
    # PostgreSQL's jsonb refuses \u0000 anywhere in a document.
    if attributes and "\\u0000" in json.dumps(attributes):
        raise ValueError("attributes contain a NUL character")
    if not any(values.get(name) for name in IDENTITY):
        raise ValueError("a voter needs an external_id, an email or a phone")
    email, phone, language = values.get("email"), values.get("phone"), values.get(
        "preferred_language")
    return VoterFields(
        external_id=values.get("external_id"),
        first_name=values.get("first_name"),
        last_name=values.get("last_name"),
        email=normalise_email(email) if email else None,
        phone=normalise_phone(phone, region) if phone else None,
        preferred_language=normalise_language(language) if language else None,
        attributes=attributes,
    )


def _blank_is_missing(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


class VoterIn(BaseModel):
    """Command: create a voter. Attributes are template variables of the campaigns they join."""

    model_config = ConfigDict(extra="forbid")

    external_id: str | None = Field(default=None, max_length=200)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    preferred_language: str | None = Field(default=None, max_length=35)
    attributes: dict[str, Any] = Field(default_factory=dict)

    _blank = field_validator(*COLUMNS, mode="before")(_blank_is_missing)


class EditVoter(VoterIn):
    """Command: change the fields given (a field given as null or blank is cleared)."""


def new_voter(cmd: VoterIn, region: str) -> VoterFields:
    try:
        return voter_fields({c: getattr(cmd, c) for c in COLUMNS}, cmd.attributes, region)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


def edited_voter(current: VoterFields, cmd: EditVoter, region: str) -> VoterFields:
    given = cmd.model_fields_set
    values = {c: getattr(cmd, c) if c in given else getattr(current, c) for c in COLUMNS}
    # Stored values are normalised already; normalising them again is a no-op.
    attributes = cmd.attributes if "attributes" in given else current.attributes
    try:
        return voter_fields(values, attributes, region)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


class CreateList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)

    @field_validator("name")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        return value.strip()


class VoterIds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    voter_ids: list[Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]] = Field(
        min_length=1, max_length=10_000)


class TargetLists(BaseModel):
    """Command: a draft campaign sends to these lists' voters (added to those it targets)."""

    model_config = ConfigDict(extra="forbid")

    list_ids: list[uuid.UUID] = Field(min_length=1, max_length=100)


def ensure_can_target_lists(campaign_id: uuid.UUID, state: str) -> None:
    if state != "draft":
        raise InvalidTransition(campaign_id, state, "target lists")


def ensure_list_unused(list_id: uuid.UUID, unstarted: list[tuple[uuid.UUID, str]]) -> None:
    """A list may go once no campaign that has yet to start targets it (started ones hold a
    snapshot of its voters already)."""
    if unstarted:
        campaign_id, state = unstarted[0]
        raise InvalidTransition(campaign_id, state, f"delete list {list_id}")


def search_pattern(q: str) -> str:
    """The LIKE pattern of a search: a case-insensitive substring of name, email or phone.

    A phone-like query loses its spaces and punctuation, since phones are stored as E.164.
    """
    term = " ".join(q.lower().split())
    if not term:
        raise Invalid("q must not be blank")
    if _PHONE_LIKE.match(term) and sum(c.isdigit() for c in term) >= 3:
        term = ("+" if term.startswith("+") else "") + re.sub(r"\D", "", term)
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


RowT = TypeVar("RowT")


class _NeedMore(Exception):
    """The parser ran out of complete lines in the middle of a record."""


class _Lines:
    """Complete physical lines for csv.reader, with a rewind to the start of the current record
    when the data runs out mid-record (a quoted field spanning a chunk boundary)."""

    def __init__(self) -> None:
        self._ready: deque[str] = deque()
        self._taken: list[str] = []
        self.final = False
        self.next_line = 1  # physical line number of the current record's first line

    def add(self, lines: Iterable[str]) -> None:
        self._ready.extend(lines)

    def peek(self) -> str | None:
        return self._ready[0] if self._ready else None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if not self._ready:
            if self.final:
                raise StopIteration
            raise _NeedMore
        line = self._ready.popleft()
        self._taken.append(line)
        return line

    @property
    def record_lines(self) -> int:
        return len(self._taken)

    def record_done(self) -> int:
        """Forget the record just read; return its first line number."""
        first = self.next_line
        self.next_line += len(self._taken)
        self._taken.clear()
        return first

    def rewind(self, keep_first: bool = True) -> None:
        """Put the current record's lines back (all, or all but its first line)."""
        taken = self._taken if keep_first else self._taken[1:]
        if not keep_first:
            self.next_line += 1
        self._ready.extendleft(reversed(taken))
        self._taken = []


# Bytes read before the file's encoding is chosen (or the whole file, if smaller).
SNIFF_BYTES = 64 * 1024
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
_ENCODING_NAMES = {"utf-8-sig": "UTF-8", "utf-16": "UTF-16", "utf-16-le": "UTF-16",
                   "utf-16-be": "UTF-16", "cp1252": "Windows-1252", "latin-1": "Latin-1"}


def detect_encoding(sample: bytes) -> str:
    """The encoding of a CSV file from its first bytes: UTF-8 (with or without a BOM), UTF-16
    (BOM, or charset-normalizer's finding), else the single-byte encoding spreadsheets write in
    Western Europe (Windows-1252; Latin-1 if a byte is not Windows-1252)."""
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        # A character cut at the end of the sample is not an error (final=False).
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8-sig"  # with or without a BOM
    except UnicodeDecodeError:
        pass
    best = charset_normalizer.from_bytes(
        sample, cp_isolation=["utf_16_le", "utf_16_be", "cp1252", "latin_1"]).best()
    if best is not None and best.encoding in ("utf_16_le", "utf_16_be"):
        return best.encoding.replace("_", "-")
    try:
        sample.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def detect_delimiter(header_line: str) -> str:
    """Comma, semicolon (Excel's in most of Europe, Denmark included) or tab: whichever the
    header line has most of outside quotes; comma on a tie."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


class IncrementalCsv(Generic[RowT]):
    """A CSV with a header row, fed in byte chunks of any size (an upload as it streams in):
    yields the good rows as `_row` makes them, keeps bad rows' line numbers and messages (the
    first MAX_LISTED_ERRORS) and counts them. The parser of both imports (voters.csv here,
    a campaign's recipients.csv in services/scheduler/recipients_csv.py).

    Rows are numbered by physical line (the header is line 1). Structural problems of the
    header raise `Invalid` (from `_read_header`); nothing has been written by then. Subclasses
    give `_read_header(fields)` and `_row(fields, line) -> row | None` (None: blank or
    rejected with `reject`).
    """

    def __init__(self) -> None:
        # Chosen from the first SNIFF_BYTES (held until then), as is the delimiter from the
        # header line: both are said in the answer (`detected`).
        self._decoder: codecs.IncrementalDecoder | None = None
        self._sniffed: list[bytes] = []
        self._sniffed_size = 0
        self.encoding = "utf-8-sig"
        self.delimiter = ","

        # The incomplete last physical line, in pieces: a long line arriving in many chunks is
        # joined once, when its end comes (appending to one string re-copied it every chunk).
        self._tail: list[str] = []
        self._lines = _Lines()
        self._header: list[str] | None = None
        self.errors: list[dict[str, Any]] = []
        self.rejected = 0

    @property
    def detected(self) -> dict[str, str]:
        return {"encoding": _ENCODING_NAMES.get(self.encoding, self.encoding),
                "delimiter": DELIMITERS.get(self.delimiter, self.delimiter)}

    def feed(self, data: bytes) -> list[RowT]:
        if self._decoder is None:
            self._sniffed.append(data)
            self._sniffed_size += len(data)
            if self._sniffed_size < SNIFF_BYTES:
                return []
            data = self._start_decoding()
        return self._parse(self._decoder.decode(data), final=False)  # type: ignore[union-attr]

    def close(self) -> list[RowT]:
        rows: list[RowT] = []
        if self._decoder is None:
            sample = self._start_decoding()
            assert self._decoder is not None
            rows = self._parse(self._decoder.decode(sample), final=False)
        assert self._decoder is not None
        rows += self._parse(self._decoder.decode(b"", final=True), final=True)
        if self._header is None:
            raise Invalid("CSV is empty: a header row is required")
        return rows

    def _start_decoding(self) -> bytes:
        sample = b"".join(self._sniffed)
        self._sniffed = []
        self.encoding = detect_encoding(sample)
        self._decoder = codecs.getincrementaldecoder(self.encoding)(errors="replace")
        return sample

    def reject(self, line: int, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append({"line": line, "error": message})

    def _parse(self, text: str, *, final: bool) -> list[RowT]:
        if final:
            complete = "".join(self._tail) + text
            self._tail = []
            self._lines.final = True
        else:
            cut = text.rfind("\n") + 1  # only the new text is searched
            if cut == 0:
                self._tail.append(text)
                complete = ""
            else:
                complete = "".join(self._tail) + text[:cut]
                self._tail = [text[cut:]] if cut < len(text) else []
        if complete:
            parts = complete.split("\n")
            last = parts.pop()  # "" when `complete` ends with a newline
            self._lines.add(p + "\n" for p in parts)
            if last:
                self._lines.add([last])
        out: list[RowT] = []
        if self._header is None and self._lines.peek() is not None:
            self.delimiter = detect_delimiter(self._lines.peek() or "")
        reader = csv.reader(self._lines, delimiter=self.delimiter)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except _NeedMore:
                if self._lines.record_lines > MAX_RECORD_LINES:
                    self._runaway_quote()
                    reader = csv.reader(self._lines, delimiter=self.delimiter)
                    continue
                self._lines.rewind()
                break
            except csv.Error as exc:
                self.reject(self._lines.record_done(), f"unreadable CSV: {exc}")
                continue
            if self._lines.record_lines > MAX_RECORD_LINES:
                self._runaway_quote()
                reader = csv.reader(self._lines, delimiter=self.delimiter)
                continue
            line = self._lines.record_done()
            if self._header is None:
                self._read_header(fields)
            elif (row := self._row(fields, line)) is not None:
                out.append(row)
        return out

    def _runaway_quote(self) -> None:
        first = self._lines.next_line
        self._lines.rewind(keep_first=False)
        self.reject(first, "unterminated quoted field")

    def _read_header(self, fields: list[str]) -> None:
        raise NotImplementedError

    def _row(self, fields: list[str], line: int) -> RowT | None:
        raise NotImplementedError

    def _checked_fields(self, fields: list[str], line: int) -> bool:
        """Whether a data row's fields can be read as the header's columns (else rejected)."""
        assert self._header is not None
        if not any(f.strip() for f in fields):
            return False  # a blank line is no row
        if len(fields) > len(self._header):
            self.reject(line, "more fields than the header has")
            return False
        if any("\ufffd" in f for f in fields):
            self.reject(line, f"not valid {self.detected['encoding']}")
            return False
        return True


class CsvImport(IncrementalCsv[ImportRow]):
    """Parses a voter CSV: COLUMNS are voter fields, any other column is an attribute."""

    def __init__(self, region: str) -> None:
        super().__init__()
        self._region = region
        self._known: list[tuple[str, int]] = []
        self._attributes: list[tuple[str, int]] = []

    @property
    def columns(self) -> tuple[str, ...]:
        """The voter fields the file has a column for: an upsert changes only these."""
        return tuple(name for name, _ in self._known)

    @property
    def has_attributes(self) -> bool:
        return bool(self._attributes)

    def _read_header(self, fields: list[str]) -> None:
        names = [f.strip() for f in fields]
        if not any(names):
            raise Invalid("CSV header is empty")
        duplicates = sorted({n for n in names if n and names.count(n) > 1})
        if duplicates:
            raise Invalid(f"CSV header names a column twice: {duplicates}")
        if not set(IDENTITY) & set(names):
            raise Invalid(f"CSV header must name at least one of {list(IDENTITY)}")
        self._header = names
        self._known = [(n, i) for i, n in enumerate(names) if n in COLUMNS]
        self._attributes = [(n, i) for i, n in enumerate(names) if n and n not in COLUMNS]

    def _row(self, fields: list[str], line: int) -> ImportRow | None:
        if not self._checked_fields(fields, line):
            return None
        width = len(fields)
        values = {
            name: (fields[i].strip() or None) if i < width else None for name, i in self._known
        }
        attributes = {name: fields[i].strip() if i < width else "" for name, i in self._attributes}
        try:
            v = voter_fields(values, attributes, self._region)
        except ValueError as exc:
            self.reject(line, str(exc))
            return None
        return ImportRow(line, *v)


def as_fields(row: Any) -> VoterFields:
    """A stored voter row's fields."""
    return VoterFields(**{f: row[f] for f in VoterFields._fields})

