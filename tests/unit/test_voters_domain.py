"""Voter directory domain: CSV parsing in chunks, normalisation, search terms, events."""

from __future__ import annotations

import time
import uuid

import pytest

from services.dispatcher import domain as dispatcher_domain
from services.scheduler import domain as scheduler_domain
from services.scheduler.domain import Invalid, InvalidTransition
from services.scheduler.voters import domain
from shared.events import OUTCOME, SEND_REQUESTED, MessageSent
from shared.wire import TemplateRef
from tests.factories import send_requested
from tests.voter_factories import chunks_of, voters_csv

TRICKY_CSV = (
    "\ufeffexternal_id,first_name,email,phone,ward\r\n"
    'x1,"Ada, the first",Ada@Example.ORG,20 10 00 07,W1\r\n'
    'x2,"Bo\nB ""the"" second",bob@example.org,,W2\r\n'
    "\r\n"
    "x3,C,not-an-email,,W3\r\n"
    "x4,D,,+45 2010 0008,\r\n"
    "x5,E,,,W5,extra\r\n"
    "x6,F,f@example.org"
).encode()


def _parse(data: bytes, chunk: int) -> tuple[domain.CsvImport, list[domain.ImportRow]]:
    parser = domain.CsvImport("DK")
    rows = [row for c in chunks_of(data, chunk) for row in parser.feed(c)]
    return parser, rows + parser.close()


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10_000])
def test_csv_parses_the_same_whatever_the_chunk_boundaries(chunk: int) -> None:
    parser, rows = _parse(TRICKY_CSV, chunk)
    got = [(r.line, r.external_id, r.first_name, r.email, r.phone, r.attributes) for r in rows]
    assert got == [
        (2, "x1", "Ada, the first", "Ada@example.org", "+4520100007", {"ward": "W1"}),
        (3, "x2", 'Bo\nB "the" second', "bob@example.org", None, {"ward": "W2"}),
        (7, "x4", "D", None, "+4520100008", {"ward": ""}),
        (9, "x6", "F", "f@example.org", None, {"ward": ""}),
    ]
    assert parser.rejected == 2
    assert [e["line"] for e in parser.errors] == [6, 8]
    assert "invalid email" in parser.errors[0]["error"]
    assert parser.errors[1]["error"] == "more fields than the header has"
    assert parser.columns == ("external_id", "first_name", "email", "phone")


def test_csv_bad_rows_are_listed_by_line_and_good_rows_kept() -> None:
    data, bad = voters_csv("t", 400, bad_every=10)
    parser, rows = _parse(data, 4096)
    assert len(rows) == 360
    assert parser.rejected == 40
    assert {e["line"]: e["error"] for e in parser.errors}.keys() == bad.keys()
    for e in parser.errors:
        assert bad[e["line"]] in e["error"]


def test_csv_lists_at_most_100_errors_but_counts_them_all() -> None:
    data, _ = voters_csv("t", 1000, bad_every=5)
    parser, _ = _parse(data, 65536)
    assert parser.rejected == 200 and len(parser.errors) == 100


def test_csv_unterminated_quote_rejects_its_line_and_parsing_goes_on() -> None:
    data = b'email,x\na@example.org,"never closed\n' + b"".join(
        b"b%d@example.org,y\n" % i for i in range(150)
    )
    parser, rows = _parse(data, 100)
    assert parser.errors == [{"line": 2, "error": "unterminated quoted field"}]
    assert len(rows) == 150 and rows[0].line == 3


def test_csv_invalid_utf8_rejects_the_row_only() -> None:
    # UTF-8 by its first 64 KiB (the encoding is chosen from them); a row further on is not.
    long = ("Å" * 40_000).encode()
    parser, rows = _parse(
        b"email,name\nl@example.org," + long + b"\na@example.org,\xff\xfe\nb@example.org,B\n", 5)
    assert parser.errors == [{"line": 3, "error": "not valid UTF-8"}]
    assert [r.email for r in rows] == ["l@example.org", "b@example.org"]


def test_csv_in_windows_1252_with_semicolons_keeps_every_letter() -> None:
    body = "external_id;first_name;last_name\n1;Søren;Ærø\n2;Zoë;Müller\n".encode("cp1252")
    parser, rows = _parse(body, 3)
    assert parser.errors == [] and parser.detected == {
        "encoding": "Windows-1252", "delimiter": "semicolon"}
    assert [(r.first_name, r.last_name) for r in rows] == [("Søren", "Ærø"), ("Zoë", "Müller")]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "CSV is empty"),
        (b"first_name,ward\nAda,W1\n", "must name at least one of"),
        (b"email,email\na@example.org,b@example.org\n", "names a column twice"),
    ],
)
def test_csv_with_an_unusable_header_is_refused_whole(body: bytes, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        _parse(body, 3)


def test_phone_is_normalised_to_e164_with_the_default_region() -> None:
    assert domain.normalise_phone("20 10 00 07", "DK") == "+4520100007"
    assert domain.normalise_phone("+44 7911 123456", "DK") == "+447911123456"
    with pytest.raises(ValueError, match="invalid phone"):
        domain.normalise_phone("2000", "DK")
    with pytest.raises(ValueError, match="invalid phone"):
        domain.normalise_phone("call me", "DK")


@pytest.mark.parametrize(
    ("email", "expected"),
    [("Ada.L@Example.ORG", "Ada.L@example.org"), ("x@Bücher.DE", "x@bücher.de"),
     ("ådå@x.dk", "ådå@x.dk")],
)
def test_email_domain_is_normalised_as_email_validator_does(email: str, expected: str) -> None:
    assert domain.normalise_email(email) == expected


@pytest.mark.parametrize("email", ["a..b@x.org", ".a@x.org", "a@x", "a b@x.org", '"q"@x.org'])
def test_invalid_emails_are_refused(email: str) -> None:
    with pytest.raises(ValueError, match="invalid email"):
        domain.normalise_email(email)


def test_a_voter_needs_an_identity_and_blank_fields_are_missing() -> None:
    with pytest.raises(Invalid, match="needs an external_id"):
        domain.new_voter(domain.VoterIn(first_name="Ada", email="  "), "DK")
    v = domain.new_voter(domain.VoterIn(email="a@Example.org", preferred_language="EN-GB"), "DK")
    assert (v.email, v.preferred_language, v.phone) == ("a@example.org", "en-GB", None)


def test_editing_changes_only_the_fields_given_and_validates_the_result() -> None:
    current = domain.new_voter(
        domain.VoterIn(external_id="e1", first_name="Ada", phone="20100007",
                       attributes={"ward": "W1"}), "DK")
    edited = domain.edited_voter(current, domain.EditVoter(email="ada@example.org"), "DK")
    assert edited == current._replace(email="ada@example.org")
    cleared = domain.edited_voter(current, domain.EditVoter(first_name=None), "DK")
    assert cleared.first_name is None and cleared.attributes == {"ward": "W1"}
    with pytest.raises(Invalid, match="invalid phone"):
        domain.edited_voter(current, domain.EditVoter(phone="123"), "DK")
    with pytest.raises(Invalid, match="NUL"):
        domain.edited_voter(current, domain.EditVoter(attributes={"x": "a\x00b"}), "DK")


@pytest.mark.parametrize(
    ("q", "pattern"),
    [("  Ada   Lovelace ", "%ada lovelace%"), ("20 10 00-07", "%20100007%"),
     ("+45 2010", "%+452010%"), ("50%_off\\", "%50\\%\\_off\\\\%"), ("Ada99", "%ada99%")],
)
def test_search_term_becomes_a_case_insensitive_substring_pattern(q: str, pattern: str) -> None:
    assert domain.search_pattern(q) == pattern


def test_only_draft_campaigns_can_target_lists() -> None:
    domain.ensure_can_target_lists(uuid.uuid4(), "draft")
    with pytest.raises(InvalidTransition, match=r"cannot target lists: .* is sending"):
        domain.ensure_can_target_lists(uuid.uuid4(), "sending")


def test_voter_id_travels_on_events_and_is_optional_for_older_producers() -> None:
    req = send_requested(voter_id=42)
    assert SEND_REQUESTED.validate_json(req.to_bytes()).voter_id == 42
    legacy = req.model_dump(mode="json")
    del legacy["voter_id"]
    assert SEND_REQUESTED.validate_python(legacy).voter_id is None
    sent = MessageSent(campaign_id=req.campaign_id, recipient_id=1, channel="email",
                       voter_id=42, provider_message_id="p")
    assert OUTCOME.validate_json(sent.to_bytes()).voter_id == 42


def test_fan_out_and_dispatcher_carry_the_voter_id_from_recipient_to_outcome() -> None:
    row = {"id": 7, "email": "a@x.org", "email_invalid": False, "phone": None,
           "phone_invalid": False, "first_name": "Ada", "last_name": None, "attributes": {},
           "voter_id": 42}
    req = scheduler_domain.send_requested_for(
        campaign_id=uuid.uuid4(), channel="email", template=TemplateRef(id=uuid.uuid4(),
                                                                        version=1), row=row)
    assert req.voter_id == 42
    outcomes = [dispatcher_domain.sent(req, "p-1"), dispatcher_domain.failed(req, "no"),
                dispatcher_domain.skipped(req, "missing_address")]
    assert [o.voter_id for o in outcomes] == [42, 42, 42]


def test_a_huge_line_is_rejected_in_linear_time_and_the_next_rows_kept() -> None:
    """A 50 MB line arriving in 64 KiB chunks: each chunk is searched once (it was re-scanned
    and re-copied with every chunk: 19 s here), the line is refused, the next row kept."""
    parser = domain.CsvImport("DK")
    rows = parser.feed(b"external_id,first_name\n")
    chunk = b"x" * 65536
    started = time.monotonic()
    for _ in range(50 * 16):
        rows += parser.feed(chunk)
    rows += parser.feed(b"\nv1,Ada\n") + parser.close()
    elapsed = time.monotonic() - started
    assert [r.external_id for r in rows] == ["v1"]
    assert parser.errors == [
        {"line": 2, "error": "unreadable CSV: field larger than field limit (131072)"}]
    assert elapsed < 3.0, elapsed
