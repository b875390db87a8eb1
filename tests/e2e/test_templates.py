"""A user creating and editing templates through the scheduler's API: a template that would fail,
hang, bloat or leak internals at send is refused at once with a 422 naming the field and the
problem; normal templates are still accepted."""

from __future__ import annotations

import inspect
import re
import time
import uuid

import httpx
import pytest

from devtools.processes import Sendout
from services.dispatcher.service import Dispatcher
from tests.e2e.conftest import wait_for_completion
from tests.e2e.helpers import add_recipients, create_campaign, requests_to
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


def test_a_template_that_fails_for_one_recipient_fails_only_that_message(
    sendout: Sendout, http: httpx.Client
) -> None:
    """The check at creation cannot know every recipient's data: `{{ 100 // share }}` passes it
    and fails at send for a recipient whose share is 0 — that message alone, as template_error;
    a list attribute is refused as output rather than printed as a Python list."""
    tag = uuid.uuid4().hex[:6]
    cid = create_campaign(http, sendout, template="{{ first_name }}: {{ 100 // share }} {{ tag }}",
                          subject="Hi {{ first_name|upper }}")
    add_recipients(http, sendout, cid, [
        {"email": f"ok1-{tag}@example.org", "first_name": "A",
         "attributes": {"share": 4, "tag": "x"}},
        {"email": f"zero-{tag}@example.org", "first_name": "B",
         "attributes": {"share": 0, "tag": "x"}},
        {"email": f"list-{tag}@example.org", "first_name": "C",
         "attributes": {"share": 5, "tag": ["a", "b"]}},
        {"email": f"ok2-{tag}@example.org", "first_name": "D",
         "attributes": {"share": 50, "tag": None}},
    ])
    http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
    final = wait_for_completion(http, sendout.tracker, cid)
    assert (final["total"], final["completed"], final["failed"]) == (4, 2, 2), final
    sent = {q["to"]: q for q in requests_to(
        http, sendout.smtp, {f"{p}-{tag}@example.org" for p in ("ok1", "zero", "list", "ok2")})}
    assert set(sent) == {f"ok1-{tag}@example.org", f"ok2-{tag}@example.org"}
    assert (sent[f"ok1-{tag}@example.org"]["subject"],
            sent[f"ok1-{tag}@example.org"]["body"]) == ("Hi A", "A: 25 x")
    assert sent[f"ok2-{tag}@example.org"]["body"] == "D: 2 "
    failed = final["reasons"]["failed"]
    assert sum(failed.values()) == 2, failed
    assert all(reason.startswith("template_error: ") for reason in failed), failed
    assert any("by zero" in reason for reason in failed), failed
    assert any("an output got a list" in reason for reason in failed), failed


def _dispatcher_renders_with_a_time_limit() -> bool:
    return "renderer" in inspect.signature(Dispatcher).parameters


# Without the Renderer, the dispatcher would render this on its event loop for seconds.
@pytest.mark.skipif(not _dispatcher_renders_with_a_time_limit(),
                    reason="the dispatcher does not render through services.dispatcher.rendering "
                           "yet")
def test_a_template_slow_for_one_recipient_times_out_for_that_message_only(
    sendout: Sendout, http: httpx.Client
) -> None:
    """Slow only with this recipient's data (the check's sample is short): the dispatcher gives
    the message its time limit, and that message alone fails "timed out"."""
    tag = uuid.uuid4().hex[:6]
    slow = ("{% for j in range(4) %}{% for i in range(10000) %}"
            "{% if (text|upper|lower|upper|lower) == '' %}x{% endif %}{% endfor %}{% endfor %}"
            "{{ first_name }}")
    cid = create_campaign(http, sendout, template=slow, subject="Hi")
    add_recipients(http, sendout, cid, [
        {"email": f"short-{tag}@example.org", "first_name": "A", "attributes": {"text": "ab"}},
        {"email": f"long-{tag}@example.org", "first_name": "B",
         "attributes": {"text": "ab" * 50000}},
    ])
    started = time.monotonic()
    http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
    final = wait_for_completion(http, sendout.tracker, cid)
    assert time.monotonic() - started < 60
    assert (final["completed"], final["failed"]) == (1, 1), final
    assert final["reasons"]["failed"] == {"template_error: timed out": 1}, final
    [mail] = requests_to(http, sendout.smtp, {f"short-{tag}@example.org"})
    assert mail["body"] == "A"
