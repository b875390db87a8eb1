import re
import uuid

import pytest
from pydantic import ValidationError

from services.scheduler import domain
from services.scheduler.addresses import email_or_invalid, phone_or_invalid
from services.scheduler.domain import RecipientRow
from services.scheduler.recipients_csv import RecipientsCsv
from services.scheduler.voters.domain import CsvImport
from shared.wire import TemplateRef
from tests.factories import campaign_payload
from tests.hostile_templates import NORMAL, REPORTED


def test_empty_template_is_rejected() -> None:
    with pytest.raises(ValidationError, match="template must not be empty"):
        domain.CreateCampaign(**campaign_payload(template="   "))


def test_template_syntax_error_is_rejected_with_its_line() -> None:
    with pytest.raises(ValidationError, match="syntax error on line 2"):
        domain.CreateCampaign(**campaign_payload(template="Hi\n{{ first_name "))


def test_email_campaign_needs_a_sender_address() -> None:
    sender = domain.Sender(uuid.uuid4(), "Office", None, "Office")
    template = domain.TemplateVersion(uuid.uuid4(), 1, None, "hi", "hi")
    with pytest.raises(domain.Invalid, match="sender with an email address"):
        domain.ensure_fits_channels(["email"], sender, template)


def test_each_channel_needs_its_template_body() -> None:
    sender = domain.Sender(uuid.uuid4(), "Office", "o@example.org", "Office")
    template = domain.TemplateVersion(uuid.uuid4(), 1, None, "hi", None)
    with pytest.raises(domain.Invalid, match="no sms body"):
        domain.ensure_fits_channels(["email", "sms"], sender, template)


def test_campaign_needs_exactly_one_sender_and_template() -> None:
    with pytest.raises(ValidationError, match="exactly one of sender_id or sender"):
        domain.CreateCampaign(**campaign_payload(sender_id=str(uuid.uuid4())))
    with pytest.raises(ValidationError, match="exactly one of template_id or template"):
        domain.CreateCampaign(**campaign_payload(template=None))


def test_template_variables_cover_bodies_and_subject_of_the_channels_used() -> None:
    t = domain.TemplateVersion(uuid.uuid4(), 1, "For {{ first_name }}", "{{ ward }}",
                               "{{ city }}")
    assert t.variables(["email"]) == {"first_name", "ward"}
    assert t.variables(["sms"]) == {"city"}


def test_schedule_needs_a_time_zone_and_a_future_time() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(domain.Invalid, match="time zone"):
        domain.ensure_schedulable_time(datetime(2026, 6, 1), now)
    with pytest.raises(domain.Invalid, match="in the past"):
        domain.ensure_schedulable_time(now - timedelta(seconds=1), now)
    assert domain.ensure_schedulable_time(now + timedelta(hours=1), now)


def test_addresses_are_normalised_and_invalid_ones_flagged() -> None:
    assert email_or_invalid("Ada@Example.ORG") == ("Ada@example.org", False)
    assert email_or_invalid("not an email") == ("not an email", True)
    assert phone_or_invalid("20 12 34 56", "DK") == ("+4520123456", False)
    assert phone_or_invalid("+44 20 7946 0958", "DK") == ("+442079460958", False)
    assert phone_or_invalid("12", "DK") == ("12", True)
    assert phone_or_invalid(None, "DK") == (None, False)


@pytest.mark.parametrize(
    ("action", "allowed"),
    [("abort", {"sending"}), ("cancel the schedule", {"scheduled"}), ("schedule", {"draft"})],
)
def test_transitions_are_allowed_only_from_their_states(action: str, allowed: set[str]) -> None:
    for state in ("draft", "scheduled", "sending", "aborting", "aborted", "completed"):
        if state in allowed:
            domain.ensure_allowed(uuid.uuid4(), state, action)
        else:
            with pytest.raises(domain.InvalidTransition, match=f"cannot {action}.*is {state}"):
                domain.ensure_allowed(uuid.uuid4(), state, action)


def test_completion_of_an_aborting_campaign_means_aborted() -> None:
    assert domain.state_after_completion("aborting") == "aborted"
    assert domain.state_after_completion("sending") == "completed"


def _recipients_csv(data: bytes, chunk: int = 7) -> tuple[list[RecipientRow], RecipientsCsv]:
    """Parsed as an upload arrives: in small chunks (a field may span two)."""
    parser = RecipientsCsv("DK")
    rows = [r for i in range(0, len(data), chunk) for r in parser.feed(data[i:i + chunk])]
    return rows + parser.close(), parser


def test_csv_unknown_columns_become_attributes_and_blanks_are_missing() -> None:
    rows, parser = _recipients_csv(
        b"email,first_name,city\n a@example.org ,Ada,Aarhus\n,Bob,Odense\n,,\n")
    assert [(r.email, r.first_name, r.attributes) for r in rows] == [
        ("a@example.org", "Ada", {"city": "Aarhus"}),
        (None, "Bob", {"city": "Odense"}),
    ]
    assert parser.rejected == 0


def test_csv_bad_rows_are_listed_by_line() -> None:
    rows, parser = _recipients_csv(
        b"email,first_name\na@x.org,Ada\nb@x.org,Bob,extra\nc@x.org,C\x00\n")
    assert [r.email for r in rows] == ["a@x.org"]
    assert [(e["line"], e["error"].split(":")[0]) for e in parser.errors] == [
        (3, "more fields than the header has"), (4, "first_name")]
    assert "NUL" in parser.errors[1]["error"]


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        ("email;first_name;by\nsoeren@example.dk;Søren Ærø;Århus\n".encode("cp1252"),
         {"encoding": "Windows-1252", "delimiter": "semicolon"}),
        ("email\tfirst_name\tby\nsoeren@example.dk\tSøren Ærø\tÅrhus\n".encode("utf-16"),
         {"encoding": "UTF-16", "delimiter": "tab"}),
        ("\ufeffemail,first_name,by\nsoeren@example.dk,Søren Ærø,Århus\n".encode(),
         {"encoding": "UTF-8", "delimiter": "comma"}),
        ('"email;x",first_name,by\nsoeren@example.dk,Søren Ærø,Århus\n'.encode(),
         {"encoding": "UTF-8", "delimiter": "comma"}),
    ],
)
def test_csv_encoding_and_separator_are_detected_and_said(
    data: bytes, detected: dict[str, str]
) -> None:
    rows, parser = _recipients_csv(data, chunk=5)
    assert parser.detected == detected and parser.errors == []
    assert [(r.first_name, r.attributes["by"]) for r in rows] == [("Søren Ærø", "Århus")]


def test_csv_a_row_not_in_the_detected_encoding_is_listed() -> None:
    """UTF-8 by its first 64 KiB; a row further on that is not UTF-8 is refused by line."""
    good = "".join(f"v{i}@example.org,Åse\n" for i in range(4000)).encode()
    rows, parser = _recipients_csv(b"email,first_name\n" + good + b"x@example.org,\xe6\n",
                                   chunk=4096)
    assert len(rows) == 4000 and parser.detected["encoding"] == "UTF-8"
    assert parser.errors == [{"line": 4002, "error": "not valid UTF-8"}]


def test_csv_rows_with_invalid_addresses_are_refused_by_line_and_good_rows_kept() -> None:
    """As voters.csv: an invalid email or phone refuses its row, with the reason."""
    rows, parser = _recipients_csv(
        b"email,phone,first_name\nnot-an-email,,A\nb@example.org,123,B\n"
        b"c@Example.ORG,20 12 34 56,C\n,,D\n")
    assert [(r.email, r.phone, r.first_name) for r in rows] == [
        ("c@example.org", "+4520123456", "C"), (None, None, "D")]
    assert not any(r.email_invalid or r.phone_invalid for r in rows)
    assert parser.rejected == 2
    assert [(e["line"], e["error"].split(":")[0]) for e in parser.errors] == [
        (2, "invalid email"), (3, "invalid phone")]


def test_both_imports_read_one_row_the_same_way() -> None:
    """One reader, one normaliser: the same row gives the same address in both imports."""
    data = b"email;phone;first_name\nAda@Example.ORG;20 12 34 56;Ada\n"
    rows, recipients = _recipients_csv(data)
    voters = CsvImport("DK")
    imported = voters.feed(data) + voters.close()
    assert [(r.email, r.phone) for r in rows] == [(v.email, v.phone) for v in imported] == [
        ("Ada@example.org", "+4520123456")]
    assert recipients.detected == voters.detected


def test_csv_without_known_columns_is_rejected() -> None:
    with pytest.raises(domain.Invalid, match="header must name"):
        _recipients_csv(b"foo,bar\n1,2\n")


@pytest.mark.parametrize("state", ["scheduled", "sending", "aborting", "aborted", "completed"])
def test_send_now_is_refused_unless_draft(state: str) -> None:
    with pytest.raises(domain.InvalidTransition, match=f"is {state}"):
        domain.ensure_can_send_now(uuid.uuid4(), state)


def test_send_requested_uses_the_channel_address_and_a_stable_event_id() -> None:
    cid = uuid.uuid4()
    row = {"id": 7, "email": "a@x.org", "email_invalid": False, "phone": "+4511223344",
           "phone_invalid": False, "first_name": "Ada", "last_name": None,
           "attributes": {"city": "Aarhus"}}
    ref = TemplateRef(id=uuid.uuid4(), version=1)
    email = domain.send_requested_for(campaign_id=cid, channel="email", template=ref, row=row)
    sms = domain.send_requested_for(campaign_id=cid, channel="sms", template=ref, row=row)
    again = domain.send_requested_for(campaign_id=cid, channel="email", template=ref, row=row)
    assert (email.address, sms.address) == ("a@x.org", "+4511223344")
    assert email.variables == {"city": "Aarhus", "first_name": "Ada", "email": "a@x.org",
                               "phone": "+4511223344"}
    assert email.event_id == again.event_id != sms.event_id


def test_missing_and_invalid_addresses_become_skip_reasons() -> None:
    row = {"id": 1, "email": None, "email_invalid": False, "phone": "12", "phone_invalid": True,
           "first_name": "A", "last_name": "B", "attributes": {}}
    ref = TemplateRef(id=uuid.uuid4(), version=1)
    cid = uuid.uuid4()
    email = domain.send_requested_for(campaign_id=cid, channel="email", template=ref, row=row)
    sms = domain.send_requested_for(campaign_id=cid, channel="sms", template=ref, row=row)
    assert (email.address, email.skip_reason) == (None, "missing_address")
    assert (sms.address, sms.skip_reason) == (None, "invalid_address")


@pytest.mark.parametrize("field", ["email_subject", "email_body", "sms_body"])
@pytest.mark.parametrize("text", list(REPORTED))
def test_a_hostile_template_is_refused_naming_its_field(field: str, text: str) -> None:
    fields = {"email_body": "Hi", "sms_body": "Hi", field: text}
    with pytest.raises(ValidationError) as refused:
        domain.TemplateIn(name="t", **fields)
    [error] = refused.value.errors()
    assert error["loc"] == (field,)
    assert f"{field}: template_error: " in error["msg"]
    assert re.search(REPORTED[text], error["msg"])


@pytest.mark.parametrize("text", list(REPORTED))
def test_a_hostile_inline_campaign_template_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="template: template_error: "):
        domain.CreateCampaign(**campaign_payload(template=text))
    with pytest.raises(ValidationError, match="subject: template_error: "):
        domain.CreateCampaign(**campaign_payload(subject=text))


@pytest.mark.parametrize("text", list(NORMAL))
def test_a_normal_template_is_accepted(text: str) -> None:
    domain.TemplateIn(name="t", email_subject=text, email_body=text, sms_body=text)
    domain.CreateCampaign(**campaign_payload(template=text, subject=text))


def test_the_variables_a_template_needs_leave_out_what_jinja_provides() -> None:
    template = domain.TemplateVersion(
        uuid.uuid4(), 1, "Hi {{ first_name }}",
        "{% for i in range(2) %}{{ loop.index }} {{ ward }}{% endfor %}", "{{ phone }}")
    assert template.variables(["email"]) == {"first_name", "ward"}
    assert template.variables(["sms"]) == {"phone"}
