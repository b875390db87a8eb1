"""The one CSV reader of the scheduler's imports (`/voters.csv`, a campaign's
`recipients.csv`): a file fed in byte chunks as an upload streams in, its encoding and
separator detected, its header read, its rows split into known columns and attributes, bad rows
listed by line. No I/O."""

from __future__ import annotations

import codecs
import csv
from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import charset_normalizer

from services.scheduler.domain import Invalid

MAX_LISTED_ERRORS = 100
# A record spanning more physical lines than this is taken for an unterminated quote: its
# first line is rejected and parsing goes on after it, instead of swallowing the file.
MAX_RECORD_LINES = 100

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
    first MAX_LISTED_ERRORS) and counts them.

    Rows are numbered by physical line (the header is line 1). The header names `COLUMNS`
    (read as fields; at least one of `REQUIRED_ONE_OF`) and any other column (an attribute);
    its structural problems raise `Invalid`, before anything has been written. Subclasses give
    `_row(fields, line) -> row | None` (None: blank or rejected with `reject`), reading a
    row's values with `_split`.
    """

    COLUMNS: tuple[str, ...] = ()
    REQUIRED_ONE_OF: tuple[str, ...] = ()

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
        self._known: list[tuple[str, int]] = []
        self._attributes: list[tuple[str, int]] = []
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
        return self._parse(self._started_decoder.decode(data), final=False)

    def close(self) -> list[RowT]:
        rows: list[RowT] = []
        if self._decoder is None:
            sample = self._start_decoding()
            rows = self._parse(self._started_decoder.decode(sample), final=False)
        rows += self._parse(self._started_decoder.decode(b"", final=True), final=True)
        if self._header is None:
            raise Invalid("CSV is empty: a header row is required")
        return rows

    @property
    def _started_decoder(self) -> codecs.IncrementalDecoder:
        assert self._decoder is not None, "_start_decoding chose the decoder"
        return self._decoder

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
        self._add_lines(self._complete_lines(text, final=final))
        if self._header is None and self._lines.peek() is not None:
            self.delimiter = detect_delimiter(self._lines.peek() or "")
        return self._read_records()

    def _complete_lines(self, text: str, *, final: bool) -> str:
        """The text up to its last newline (all of it when final), after the tail held back."""
        if final:
            complete = "".join(self._tail) + text
            self._tail = []
            self._lines.final = True
            return complete
        cut = text.rfind("\n") + 1  # only the new text is searched
        if cut == 0:
            self._tail.append(text)
            return ""
        complete = "".join(self._tail) + text[:cut]
        self._tail = [text[cut:]] if cut < len(text) else []
        return complete

    def _add_lines(self, complete: str) -> None:
        if not complete:
            return
        parts = complete.split("\n")
        last = parts.pop()  # "" when `complete` ends with a newline
        self._lines.add(p + "\n" for p in parts)
        if last:
            self._lines.add([last])

    def _read_records(self) -> list[RowT]:
        out: list[RowT] = []
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

    @property
    def columns(self) -> tuple[str, ...]:
        """The known columns the file has."""
        return tuple(name for name, _ in self._known)

    @property
    def has_attributes(self) -> bool:
        return bool(self._attributes)

    def _read_header(self, fields: list[str]) -> None:
        names = [f.strip() for f in fields]
        self._check_header(names)
        self._header = names
        self._known = [(n, i) for i, n in enumerate(names) if n in self.COLUMNS]
        self._attributes = [(n, i) for i, n in enumerate(names) if n and n not in self.COLUMNS]

    def _check_header(self, names: list[str]) -> None:
        if not any(names):
            raise Invalid("CSV header is empty")
        duplicates = sorted({n for n in names if n and names.count(n) > 1})
        if duplicates:
            raise Invalid(f"CSV header names a column twice: {duplicates}")
        if not set(self.REQUIRED_ONE_OF) & set(names):
            raise Invalid(f"CSV header must name at least one of {list(self.REQUIRED_ONE_OF)} "
                          f"(read as {self.detected['delimiter']}-separated)")

    def _split(
        self, fields: list[str], line: int
    ) -> tuple[dict[str, str | None], dict[str, str]] | None:
        """A data row's known columns (stripped; blank or absent: None) and attributes
        (stripped); None if the row is blank or was rejected."""
        if not self._checked_fields(fields, line):
            return None
        width = len(fields)
        values = {name: (fields[i].strip() or None) if i < width else None
                  for name, i in self._known}
        attributes = {name: fields[i].strip() if i < width else ""
                      for name, i in self._attributes}
        return values, attributes

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
