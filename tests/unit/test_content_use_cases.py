"""The scheduler's content use cases (senders, templates and their versions) over a fake unit
of work: no network, no database."""

from __future__ import annotations

import uuid

import pytest

from services.scheduler.content import use_cases
from services.scheduler.content.model import SenderIn, TemplateIn
from services.scheduler.errors import NotFound
from tests.unit.fake_scheduler_uow import ORG, OTHER_ORG, FakeUnitOfWork

HELLO = TemplateIn(name="Hello", email_subject="Hi", email_body="Hi {{ first_name }}")


async def test_create_sender_belongs_to_the_organisation() -> None:
    uow = FakeUnitOfWork()
    cmd = SenderIn(name="Election Office", email="Office@Example.org", sms_sender_id="Office")
    sender = await use_cases.create_sender(uow, cmd, ORG)
    assert (sender.name, sender.email, sender.sms_sender_id) == (
        "Election Office", cmd.email, "Office")
    assert uow.store.sender_rows == {sender.id: (ORG, sender)} and uow.commits == 1


async def test_create_template_starts_at_version_one() -> None:
    uow = FakeUnitOfWork()
    version = await use_cases.create_template(uow, HELLO, ORG)
    assert (version.version, version.email_body) == (1, "Hi {{ first_name }}")
    assert uow.store.templates[version.template_id] == (ORG, [version])


async def test_edit_template_adds_a_version_and_keeps_the_earlier() -> None:
    uow = FakeUnitOfWork()
    first = await use_cases.create_template(uow, HELLO, ORG)
    edited = TemplateIn(name="Hello", sms_body="Hi {{ first_name }}, vote!")
    second = await use_cases.edit_template(uow, first.template_id, edited, ORG)
    assert (second.template_id, second.version, second.sms_body) == (
        first.template_id, 2, "Hi {{ first_name }}, vote!")
    assert uow.store.templates[first.template_id][1] == [first, second]


@pytest.mark.parametrize("org", [OTHER_ORG, None])
async def test_another_organisations_or_no_template_is_not_found(
    org: uuid.UUID | None,
) -> None:
    uow = FakeUnitOfWork()
    first = await use_cases.create_template(uow, HELLO, ORG)
    template_id = first.template_id if org is not None else uuid.uuid4()
    with pytest.raises(NotFound):
        await use_cases.edit_template(uow, template_id, HELLO, org or ORG)
    assert uow.store.templates[first.template_id][1] == [first] and uow.commits == 1
