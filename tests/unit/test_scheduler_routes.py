"""The scheduler's HTTP app without a database: built and documented from its route modules
alone, and its routes run over a fake unit of work (FastAPI's dependency overrides)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.scheduler.app import create_app
from services.scheduler.campaigns.model import Kind, State
from services.scheduler.entrypoints.http import dependencies
from services.scheduler.settings import SchedulerSettings
from shared import topics
from tests.unit.fake_scheduler_uow import (
    OTHER_ORG,
    FakeFanOut,
    FakeUnitOfWork,
    StoredCampaign,
    principal,
    recipient,
)

ADA = principal("ada")


def _app(uow: FakeUnitOfWork, fanout: FakeFanOut) -> FastAPI:
    """No lifespan runs (the client is not entered): nothing connects to anything."""
    app = create_app(SchedulerSettings())

    async def fake_uow() -> FakeUnitOfWork:
        return uow

    async def fake_fanout() -> FakeFanOut:
        return fanout

    async def ada() -> Any:
        return ADA

    app.dependency_overrides[dependencies.unit_of_work] = fake_uow
    app.dependency_overrides[dependencies.fanout] = fake_fanout
    app.dependency_overrides[dependencies.current_user] = ada
    return app


@pytest.fixture
def p2p_campaign() -> Iterator[tuple[TestClient, FakeUnitOfWork, FakeFanOut, StoredCampaign]]:
    uow, fanout = FakeUnitOfWork(), FakeFanOut()
    campaign = StoredCampaign(id=uuid.uuid4(), kind=Kind.P2P, state=State.DRAFT,
                              recipients=[recipient(id=1, email="p@example.org")])
    uow.store.campaigns[campaign.id] = campaign
    yield TestClient(_app(uow, fanout)), uow, fanout, campaign


def test_the_app_and_its_openapi_document_are_built_without_a_database() -> None:
    doc = create_app(SchedulerSettings()).openapi()
    assert {"/campaigns/{campaign_id}/send-now", "/campaigns/{campaign_id}/p2p/start",
            "/admin/users", "/auth/sign-in", "/voters", "/opt-outs", "/senders", "/templates",
            "/organisations/{organisation_id}/inbound-sms/twilio", "/health"} <= set(doc["paths"])
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_start_sending_route_answers_the_use_cases_state_and_kicks_the_fan_out(
    p2p_campaign: tuple[TestClient, FakeUnitOfWork, FakeFanOut, StoredCampaign],
) -> None:
    client, uow, fanout, campaign = p2p_campaign
    answer = client.post(f"/campaigns/{campaign.id}/p2p/start")
    assert (answer.status_code, answer.json()) == (
        200, {"campaign_id": str(campaign.id), "state": "sending"})
    assert uow.store.senders == {ADA.user_id: campaign.id}
    assert fanout.kicked == [campaign.id]


def test_start_sending_a_second_campaign_answers_409_naming_the_active_one(
    p2p_campaign: tuple[TestClient, FakeUnitOfWork, FakeFanOut, StoredCampaign],
) -> None:
    client, uow, _, campaign = p2p_campaign
    other = StoredCampaign(id=uuid.uuid4(), kind=Kind.P2P, recipients=[recipient(id=2)])
    uow.store.campaigns[other.id] = other
    assert client.post(f"/campaigns/{campaign.id}/p2p/start").status_code == 200
    answer = client.post(f"/campaigns/{other.id}/p2p/start")
    assert answer.status_code == 409
    assert answer.json()["detail"]["active_campaign"] == str(campaign.id)


def test_press_send_route_puts_the_request_in_the_outbox_once(
    p2p_campaign: tuple[TestClient, FakeUnitOfWork, FakeFanOut, StoredCampaign],
) -> None:
    client, uow, _, campaign = p2p_campaign
    client.post(f"/campaigns/{campaign.id}/p2p/start")
    press = f"/campaigns/{campaign.id}/recipients/1/send"
    assert client.post(press).json() == {"recipient_id": 1, "status": "sent"}
    assert client.post(press).json() == {"recipient_id": 1, "status": "already sent"}
    assert [topic for _, (topic, _, _) in uow.store.outbox] == [topics.SEND_REQUESTED]


def test_another_organisations_campaign_answers_404_as_one_that_does_not_exist(
    p2p_campaign: tuple[TestClient, FakeUnitOfWork, FakeFanOut, StoredCampaign],
) -> None:
    client, uow, _, _ = p2p_campaign
    theirs = StoredCampaign(id=uuid.uuid4(), kind=Kind.P2P, organisation_id=OTHER_ORG,
                            recipients=[recipient(id=3)])
    uow.store.campaigns[theirs.id] = theirs
    assert client.post(f"/campaigns/{theirs.id}/p2p/start").status_code == 404
    assert client.post(f"/campaigns/{uuid.uuid4()}/p2p/start").status_code == 404
    assert uow.store.senders == {}
