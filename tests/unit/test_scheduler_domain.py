import uuid

import pytest
from pydantic import ValidationError

from services.scheduler import domain
from shared.events import TemplateRef
from tests.factories import campaign_payload


def test_empty_template_is_rejected() -> None:
    with pytest.raises(ValidationError, match="template must not be empty"):
        domain.CreateCampaign(**campaign_payload(template="   "))


def test_template_syntax_error_is_rejected_with_its_line() -> None:
    with pytest.raises(ValidationError, match="syntax error on line 2"):
        domain.CreateCampaign(**campaign_payload(template="Hi\n{{ first_name "))


def test_email_campaign_needs_a_sender_address() -> None:
    with pytest.raises(ValidationError, match=r"sender\.email"):
        domain.CreateCampaign(**campaign_payload(sender={"name": "Office"}))


def test_csv_unknown_columns_become_attributes_and_blanks_are_missing() -> None:
    rows = domain.parse_csv(
        domain.csv_lines(b"email,first_name,city\n a@example.org ,Ada,Aarhus\n,Bob,Odense\n")
    )
    assert [(r.email, r.first_name, r.attributes) for r in rows] == [
        ("a@example.org", "Ada", {"city": "Aarhus"}),
        (None, "Bob", {"city": "Odense"}),
    ]


def test_csv_with_bad_rows_is_rejected_whole_listing_each_row() -> None:
    with pytest.raises(domain.Invalid) as err:
        domain.parse_csv(domain.csv_lines(b"email,first_name\na@x.org,Ada\nb@x.org,Bob,extra\n"))
    assert err.value.errors == [{"line": 3, "error": "more fields than the header has"}]


def test_csv_without_known_columns_is_rejected() -> None:
    with pytest.raises(domain.Invalid, match="header must name"):
        domain.parse_csv(domain.csv_lines(b"foo,bar\n1,2\n"))


def test_csv_must_be_utf8() -> None:
    with pytest.raises(domain.Invalid, match="UTF-8"):
        domain.csv_lines(b"email\n\xff\xfe@x.org\n")


@pytest.mark.parametrize("state", ["scheduled", "sending", "aborting", "aborted", "completed"])
def test_send_now_is_refused_unless_draft(state: str) -> None:
    with pytest.raises(domain.InvalidTransition, match=f"is {state}"):
        domain.ensure_can_send_now(uuid.uuid4(), state)


def test_send_requested_uses_the_channel_address_and_a_stable_event_id() -> None:
    cid = uuid.uuid4()
    row = {"id": 7, "email": "a@x.org", "phone": "+4511223344", "first_name": "Ada",
           "last_name": None, "attributes": {"city": "Aarhus"}}
    ref = TemplateRef(id=uuid.uuid4(), version=1)
    email = domain.send_requested_for(campaign_id=cid, channel="email", template=ref, row=row)
    sms = domain.send_requested_for(campaign_id=cid, channel="sms", template=ref, row=row)
    again = domain.send_requested_for(campaign_id=cid, channel="email", template=ref, row=row)
    assert (email.address, sms.address) == ("a@x.org", "+4511223344")
    assert email.variables == {"city": "Aarhus", "first_name": "Ada", "last_name": ""}
    assert email.event_id == again.event_id != sms.event_id


def test_recipient_without_address_yields_request_without_address() -> None:
    row = {"id": 1, "email": None, "phone": None, "first_name": "A", "last_name": "B",
           "attributes": {}}
    req = domain.send_requested_for(
        campaign_id=uuid.uuid4(), channel="email", template=TemplateRef(id=uuid.uuid4(), version=1),
        row=row,
    )
    assert req.address is None
