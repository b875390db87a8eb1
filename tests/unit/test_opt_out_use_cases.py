"""The scheduler's opt-out use cases over a fake unit of work: no network, no database."""

from __future__ import annotations

import uuid

import pytest

from services.scheduler.errors import NotFound
from services.scheduler.opt_outs import use_cases
from shared import topics
from shared.events import OPTED_OUT
from tests.unit.fake_scheduler_uow import ORG, OTHER_ORG, FakeUnitOfWork


def voter(email: str | None, phone: str | None) -> dict[str, object]:
    return {"email": email, "phone": phone, "opted_out": False}


async def test_an_opt_out_is_stored_normalised_marks_voters_and_is_announced() -> None:
    uow = FakeUnitOfWork()
    uow.store.voters = {ORG: {"a": voter(None, "+4520999999"), "b": voter("x@example.org", None)},
                        OTHER_ORG: {"c": voter(None, "+4520999999")}}
    address = await use_cases.opt_out(uow, ORG, "20 99 99 99", source="api", keyword=None,
                                      region="DK")
    assert address == "+4520999999"
    assert uow.store.opt_outs == {(ORG, "+4520999999")}
    assert [v["opted_out"] for v in uow.store.voters[ORG].values()] == [True, False]
    assert uow.store.voters[OTHER_ORG]["c"]["opted_out"] is False
    [(_, (topic, key, value))] = uow.store.outbox
    assert (topic, key) == (topics.OPT_OUTS, ORG.bytes)
    event = OPTED_OUT.validate_json(value)
    assert (event.organisation_id, event.address) == (ORG, "+4520999999")


async def test_an_email_opt_out_matches_voters_in_any_case_and_repeats_harmlessly() -> None:
    uow = FakeUnitOfWork()
    uow.store.voters = {ORG: {"b": voter("Ada@Example.org", None)}}
    for keyword in ("STOP", "STOP"):
        address = await use_cases.opt_out(uow, ORG, "ADA@example.org", source="inbound_sms",
                                          keyword=keyword, region="DK")
    assert address == "ADA@example.org"  # the domain part normalised
    assert uow.store.opt_outs == {(ORG, "ADA@example.org")}
    assert uow.store.voters[ORG]["b"]["opted_out"] is True
    assert len(uow.store.outbox) == 2 and uow.commits == 2


async def test_only_an_existing_organisation_takes_inbound_sms() -> None:
    uow = FakeUnitOfWork()
    uow.store.organisations = {"Election Office": ORG}
    await use_cases.ensure_organisation_exists(uow, ORG)
    with pytest.raises(NotFound):
        await use_cases.ensure_organisation_exists(uow, uuid.uuid4())
