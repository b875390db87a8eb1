"""The dispatcher's and the tracker's HTTP apps without a database, as the scheduler's
(test_scheduler_routes.py): built and documented from their route modules alone; before the
service runs, /health answers 503, and the tracker's routes run over stand-ins for the running
tracker (FastAPI's dependency overrides)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.dispatcher.app import create_app as create_dispatcher
from services.dispatcher.settings import DispatcherSettings
from services.tracker.app import create_app as create_tracker
from services.tracker.entrypoints.http import dependencies
from services.tracker.settings import TrackerSettings

OPS = {("GET", "/health"), ("GET", "/metrics")}
EXPECTED: dict[str, set[tuple[str, str]]] = {
    "dispatcher": OPS,
    "tracker": OPS | {
        ("GET", "/campaigns/{campaign_id}/progress"),
        ("GET", "/campaigns/{campaign_id}/recipients"),
        ("GET", "/campaigns/{campaign_id}/report.csv"),
        ("GET", "/voters/{voter_id}/history"),
        ("POST", "/receipts"),
        ("POST", "/providers/twilio/status"),
    },
}


def _app(service: str) -> FastAPI:
    """No lifespan runs (the client is not entered): nothing connects to anything."""
    if service == "dispatcher":
        return create_dispatcher(DispatcherSettings())
    return create_tracker(TrackerSettings())


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_each_services_app_and_its_openapi_document_are_built_without_a_database(
    service: str,
) -> None:
    doc = _app(service).openapi()
    operations = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert operations == EXPECTED[service]
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_health_answers_503_until_the_service_runs(service: str) -> None:
    answer = TestClient(_app(service)).get("/health")
    assert answer.status_code == 503


class _StandInTracker:
    """What the routes read of a running tracker, with no token known."""

    pool: Any = None

    async def look_up(self, token_hash: bytes) -> None:
        return None


def _tracker(settings: TrackerSettings) -> TestClient:
    app = create_tracker(settings)

    async def running() -> _StandInTracker:
        return _StandInTracker()

    app.dependency_overrides[dependencies.running] = running
    return TestClient(app)


def test_tracker_reads_answer_401_without_a_known_token() -> None:
    client = _tracker(TrackerSettings())
    progress = "/campaigns/00000000-0000-0000-0000-000000000001/progress"
    assert client.get(progress).status_code == 401
    assert client.get(progress, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/voters/7/history").status_code == 401


def test_tracker_webhooks_answer_503_while_not_configured() -> None:
    client = _tracker(TrackerSettings(receipts_secret=None, twilio_auth_token=None))
    assert client.post("/receipts", content=b"{}").status_code == 503
    assert client.post("/providers/twilio/status", data={"MessageSid": "x"}).status_code == 503


def test_tracker_receipts_webhook_refuses_an_unsigned_body_once_configured() -> None:
    client = _tracker(TrackerSettings(receipts_secret=SecretStr("s" * 32)))
    assert client.post("/receipts", content=b"{}").status_code == 401
