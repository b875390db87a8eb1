"""The campaign use cases that read a recipients CSV as it streams in, and that send to one
voter from their page, over a fake unit of work: no network, no database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.scheduler import domain
from services.scheduler.campaigns import use_cases
from services.scheduler.campaigns.model import Kind, State
from services.scheduler.errors import Invalid, InvalidTransition, NotFound
from tests.unit.fake_scheduler_uow import (
    ORG,
    OTHER_ORG,
    FakeFanOut,
    FakeUnitOfWork,
    StoredCampaign,
    principal,
)

ADA = principal("ada")


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def with_draft(state: State = State.DRAFT) -> tuple[FakeUnitOfWork, uuid.UUID]:
    uow = FakeUnitOfWork()
    campaign = StoredCampaign(id=uuid.uuid4(), state=state)
    uow.store.campaigns[campaign.id] = campaign
    return uow, campaign.id


async def test_a_csv_is_added_in_batches_its_bad_rows_listed_by_line() -> None:
    uow, cid = with_draft()
    body = chunks(b"email,first_name\nib@example.org,Ib\nnot an email,X\n",
                  b"bo@example.org,Bo\ncy@example.org,Cy\n")
    added = await use_cases.add_recipients_csv(uow, cid, body, "DK", ADA, batch_rows=1)
    assert (added.added, added.rejected) == (3, 1)
    assert [e.line for e in added.errors] == [3]
    assert added.detected.delimiter == "comma"
    stored = uow.store.campaigns[cid].recipients
    assert [r["first_name"] for r in stored] == ["Ib", "Bo", "Cy"] and uow.commits == 1


async def test_a_csv_without_one_good_row_adds_nothing() -> None:
    uow, cid = with_draft()
    with pytest.raises(Invalid, match="no recipients added: 1 rows refused"):
        await use_cases.add_recipients_csv(uow, cid, chunks(b"email\nnope\n"), "DK", ADA)
    with pytest.raises(Invalid, match="CSV has a header but no recipients"):
        await use_cases.add_recipients_csv(uow, cid, chunks(b"email\n"), "DK", ADA)
    assert uow.store.campaigns[cid].recipients == [] and uow.commits == 0


async def test_a_csv_goes_only_to_a_draft_of_the_callers_organisation() -> None:
    uow, cid = with_draft(State.SENDING)
    with pytest.raises(InvalidTransition):
        await use_cases.add_recipients_csv(uow, cid, chunks(b"email\na@example.org\n"), "DK",
                                           ADA)
    with pytest.raises(NotFound):
        await use_cases.add_recipients_csv(uow, cid, chunks(b"email\na@example.org\n"), "DK",
                                           principal("eve", OTHER_ORG))
    assert uow.store.campaigns[cid].recipients == []


def voter(voter_id: int, **fields: Any) -> dict[str, Any]:
    return {"id": voter_id, "email": "ib@example.org", "phone": "+4520123456",
            "first_name": "Ib", "last_name": "Berg", "preferred_language": "da",
            "attributes": {"ward": "North"}, "opted_out": False} | fields


async def content(uow: FakeUnitOfWork) -> domain.SendToVoter:
    async with uow:
        sender = await uow.content.add_sender(
            domain.SenderIn(name="Ward", email="ward@example.org", sms_sender_id="Ward"), ORG)
        body = "Hi {{ first_name }} of {{ ward }}"
        template = await uow.content.add_template(
            domain.TemplateIn(name="t", email_subject="Hello", email_body=body, sms_body=body),
            ORG)
        await uow.commit()
    return domain.SendToVoter(channels=["email", "sms"], sender_id=sender.id,
                              template_id=template.template_id)


async def test_a_send_to_a_voter_is_an_individual_send_with_their_attributes() -> None:
    uow, fanout = FakeUnitOfWork(), FakeFanOut()
    uow.store.voters = {ORG: {"e:ib@example.org": voter(7)}}
    cmd = await content(uow)
    campaign_id = await use_cases.send_to_voter(uow, fanout, 7, cmd, ADA, "DK")
    saved = uow.store.campaigns[campaign_id]
    assert (saved.kind, saved.state, saved.total) == (Kind.INDIVIDUAL, State.SENDING, 2)
    [sent_to] = saved.recipients
    assert (sent_to["email"], sent_to["voter_id"]) == ("ib@example.org", 7)
    assert sent_to["attributes"] == {"ward": "North", "preferred_language": "da"}
    assert fanout.kicked == [campaign_id]


async def test_no_send_to_an_opted_out_another_organisations_or_no_voter() -> None:
    uow, fanout = FakeUnitOfWork(), FakeFanOut()
    uow.store.voters = {ORG: {"a": voter(7, opted_out=True)}, OTHER_ORG: {"b": voter(8)}}
    cmd = await content(uow)
    with pytest.raises(Invalid, match="opted out"):
        await use_cases.send_to_voter(uow, fanout, 7, cmd, ADA, "DK")
    for voter_id in (8, 9):
        with pytest.raises(NotFound):
            await use_cases.send_to_voter(uow, fanout, voter_id, cmd, ADA, "DK")
    assert uow.store.campaigns == {} and fanout.kicked == []
