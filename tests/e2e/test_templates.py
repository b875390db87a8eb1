"""A user creating and editing templates through the scheduler's API: a template that would fail,
hang, bloat or leak internals at send is refused at once with a 422 naming the field and the
problem; normal templates are still accepted."""

from __future__ import annotations

import re

import httpx
import pytest

from devtools.processes import Sendout
from tests.factories import campaign_payload
from tests.hostile_templates import HOSTILE, NORMAL, REPORTED

pytestmark = pytest.mark.e2e


def _refusal(r: httpx.Response, field: str) -> str:
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", field], r.text
    return str(error["msg"])


def test_each_hostile_template_is_refused_at_creation_and_edit(
    sendout: Sendout, http: httpx.Client
) -> None:
    s = sendout.scheduler
    stored = http.post(f"{s}/templates", json={
        "name": "Fine", "email_subject": "Hi", "email_body": "Hi {{ first_name }}",
        "sms_body": "Hi {{ first_name }}"}).raise_for_status().json()
    before = len(http.get(f"{s}/templates").raise_for_status().json()["templates"])
    for text, reason in HOSTILE.items():
        for field in ("email_subject", "email_body", "sms_body"):
            body = {"name": "Hostile", "email_body": "Hi", "sms_body": "Hi", field: text}
            message = _refusal(http.post(f"{s}/templates", json=body), field)
            assert f"{field}: template_error: " in message and re.search(reason, message), (
                text, message)
            assert " at 0x" not in message
        message = _refusal(http.put(f"{s}/templates/{stored['id']}", json={
            "name": "Fine", "email_body": text, "sms_body": "Hi"}), "email_body")
        assert re.search(reason, message), (text, message)
    for text in REPORTED:
        r = http.post(f"{s}/campaigns", json=campaign_payload(template=text))
        assert "template: template_error: " in _refusal(r, "template"), text
    # Nothing refused was stored, and the stored template was not changed.
    templates = http.get(f"{s}/templates").raise_for_status().json()["templates"]
    assert len(templates) == before
    [fine] = [t for t in templates if t["id"] == stored["id"]]
    assert fine["email_body"] == "Hi {{ first_name }}"


def test_normal_templates_are_still_accepted(sendout: Sendout, http: httpx.Client) -> None:
    s = sendout.scheduler
    for text in NORMAL:
        r = http.post(f"{s}/templates", json={
            "name": "Normal", "email_subject": text, "email_body": text, "sms_body": text})
        assert r.status_code == 201, (text, r.text)
        r = http.put(f"{s}/templates/{r.json()['id']}", json={
            "name": "Normal", "email_body": text, "sms_body": text})
        assert r.status_code == 200, (text, r.text)
        r = http.post(f"{s}/campaigns", json=campaign_payload(template=text, subject=text))
        assert r.status_code == 201, (text, r.text)
