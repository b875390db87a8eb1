"""Every API call is authenticated, and a user sees and acts only within their organisation.

The endpoints are read from each service's OpenAPI document, so an endpoint added later is
covered (or fails this test) without anyone remembering to list it here.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from devtools.processes import Sendout
from tests.e2e.conftest import bearer, wait_for_completion
from tests.e2e.helpers import in_seconds, requests_to, wait_state

pytestmark = pytest.mark.e2e

# Not user endpoints: operations, the providers' signed webhooks, administration (its own
# token; tested in test_p2p).
# /auth/sign-in: a person signs in with a password there, to get a token.
PUBLIC = {"/health", "/metrics", "/receipts", "/organisations/{organisation_id}/inbound-sms",
          "/auth/sign-in", "/providers/twilio/status",
          "/organisations/{organisation_id}/inbound-sms/twilio"}


def _endpoints(base: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{base}/openapi.json").raise_for_status().json()
    return sorted(
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if path not in PUBLIC and not path.startswith("/admin/")
    )


def _owned_world(http: httpx.Client, sendout: Sendout, owner: dict[str, str],
                 tag: str) -> dict[str, Any]:
    """Org A's sender, template, voter on a list, and a campaign sent to it and one more."""
    s = sendout.scheduler

    def post(path: str, body: Any) -> dict[str, Any]:
        r = http.post(f"{s}{path}", json=body, headers=owner)
        assert r.status_code in (200, 201, 202), (path, r.text)
        return dict(r.json())

    sender = post("/senders", {"name": "A office", "email": "office@a.example.org"})["id"]
    template = post("/templates", {"name": "A", "email_subject": "Hi {{ first_name }}",
                                   "email_body": "Vote, {{ first_name }}."})["id"]
    voter_email = f"{tag}-voter@a.example.org"
    voter = post("/voters", {"first_name": "Vera", "email": voter_email})["id"]
    list_id = post("/lists", {"name": f"A list {tag}"})["id"]
    post(f"/lists/{list_id}/voters", {"voter_ids": [voter]})
    cid = post("/campaigns", {"name": "A campaign", "channels": ["email"],
                              "sender_id": sender, "template_id": template})["id"]
    post(f"/campaigns/{cid}/recipients",
         {"recipients": [{"email": f"{tag}-r@a.example.org", "first_name": "Rita"}]})
    post(f"/campaigns/{cid}/lists", {"list_ids": [list_id]})
    post(f"/campaigns/{cid}/send-now", None)
    with httpx.Client(timeout=30, headers=owner) as as_owner:
        final = wait_for_completion(as_owner, sendout.tracker, cid)
    assert final["completed"] == 2, final
    rows = http.get(f"{sendout.tracker}/campaigns/{cid}/recipients",
                    headers=owner).raise_for_status().json()["recipients"]
    return {"campaign_id": cid, "sender_id": sender, "template_id": template,
            "voter_id": voter, "list_id": list_id, "recipient_id": rows[0]["recipient_id"],
            "voter_email": voter_email, "recipient_email": f"{tag}-r@a.example.org"}


def _request(method: str, path: str, ids: dict[str, Any]) -> dict[str, Any]:
    """A request that is valid but for whose resources it names, so that only the
    organisation check can refuse it."""
    csv = {"content": b"email,first_name\nx@b.example.org,X\n",
           "headers": {"content-type": "text/csv"}}
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/campaigns/{campaign_id}/recipients"):
            {"json": {"recipients": [{"email": "x@b.example.org"}]}},
        ("POST", "/campaigns/{campaign_id}/recipients.csv"): csv,
        ("POST", "/campaigns/{campaign_id}/schedule"):
            {"json": {"at": in_seconds(3600).isoformat()}},
        ("POST", "/campaigns/{campaign_id}/end"): {"json": {"confirmation": "END"}},
        ("POST", "/campaigns/{campaign_id}/lists"): {"json": {"list_ids": [ids["list_id"]]}},
        ("PUT", "/templates/{template_id}"):
            {"json": {"name": "B's now", "email_subject": "x", "email_body": "x"}},
        ("PATCH", "/voters/{voter_id}"): {"json": {"first_name": "Mallory"}},
        ("POST", "/voters/{voter_id}/send"):
            {"json": {"channels": ["email"], "sender_id": ids["sender_id"],
                      "template_id": ids["template_id"]}},
        ("POST", "/lists/{list_id}/voters"): {"json": {"voter_ids": [ids["voter_id"]]}},
        ("POST", "/lists/{list_id}/voters/remove"): {"json": {"voter_ids": [ids["voter_id"]]}},
        ("POST", "/lists/{list_id}/voters.csv"): csv,
    }
    return bodies.get((method, path), {})


def test_every_user_endpoint_needs_an_api_token(sendout: Sendout) -> None:
    checked = 0
    for base in (sendout.scheduler, sendout.tracker):
        for method, path in _endpoints(base):
            url = base + path.format_map(_AnyId())
            for headers in ({}, {"Authorization": "Bearer so_not-a-token"},
                            {"Authorization": "Basic b3BlcmF0b3I6"}):
                r = httpx.request(method, url, headers=headers, timeout=30)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
            checked += 1
    print(f"\n{checked} endpoints refuse calls without a valid token")
    assert checked >= 40


def test_another_organisations_user_gets_404_on_every_endpoint_report_included(
    sendout: Sendout, http: httpx.Client
) -> None:
    tag = uuid.uuid4().hex[:8]
    owner = bearer(sendout.new_user(f"Org A {tag}", "alice"))
    stranger = bearer(sendout.new_user(f"Org B {tag}", "bob"))
    ids = _owned_world(http, sendout, owner, tag)

    refused = []
    for base in (sendout.scheduler, sendout.tracker):
        for method, path in _endpoints(base):
            names = {n for n in ids if "{" + n + "}" in path}
            if not names:
                continue
            url = base + path.format_map(ids)
            request = _request(method, path, ids)
            request["headers"] = {**stranger, **request.get("headers", {})}
            r = http.request(method, url, **request)
            if base == sendout.tracker and path == "/voters/{voter_id}/history":
                # The tracker does not know the directory: an unknown voter has an empty
                # history, and org A's campaigns are not in org B's.
                assert r.status_code == 200 and r.json()["history"] == [], r.text
                continue
            assert r.status_code == 404, (method, path, r.text)
            refused.append(f"{method} {path}")
    print(f"\n{len(refused)} endpoints answer 404 to another organisation:\n  "
          + "\n  ".join(refused))
    assert "GET /campaigns/{campaign_id}/report.csv" in refused
    assert "GET /campaigns/{campaign_id}/progress" in refused
    assert len(refused) >= 30

    # Lists are the organisation's own too.
    s = sendout.scheduler
    for path, key in (("/campaigns", "campaigns"), ("/voters", "voters"), ("/lists", "lists"),
                      ("/senders", "senders"), ("/templates", "templates")):
        seen = http.get(f"{s}{path}", headers=stranger).raise_for_status().json()[key]
        assert not {str(x["id"]) for x in seen} & {str(v) for v in ids.values()}, path
    # Org A's sender and template cannot be used by org B either.
    r = http.post(f"{s}/campaigns", headers=stranger, json={
        "name": "B", "channels": ["email"], "sender_id": ids["sender_id"],
        "template_id": ids["template_id"]})
    assert r.status_code == 422 and "does not exist" in r.text, r.text

    # And nothing org B tried changed anything of org A's, or sent anything.
    with httpx.Client(timeout=30, headers=owner) as as_owner:
        c = wait_state(as_owner, sendout, ids["campaign_id"], {"completed"})
    assert c["recipients"] == 2
    assert [t["version"] for t in http.get(f"{s}/templates", headers=owner).json()["templates"]
            if t["id"] == ids["template_id"]] == [1]
    voter = http.get(f"{s}/voters/{ids['voter_id']}", headers=owner).json()
    assert voter["first_name"] == "Vera" and [x["id"] for x in voter["lists"]] == [
        ids["list_id"]]
    assert len(requests_to(http, sendout.smtp, {ids["voter_email"]})) == 1
    assert len(requests_to(http, sendout.smtp, {"x@b.example.org"})) == 0


class _AnyId(dict[str, Any]):
    """Fills any path parameter with a well-formed id (a UUID; the integer ids accept it
    only where they are integers, so give those an integer)."""

    def __missing__(self, key: str) -> str:
        return "1" if key in ("voter_id", "recipient_id") else str(uuid.uuid4())


def test_tokens_can_be_added_and_revoked_and_revocation_reaches_the_tracker(
    sendout: Sendout,
) -> None:
    admin = {"X-Sendout-Admin-Token": sendout.admin_token}
    user = sendout.new_user(f"Org R {uuid.uuid4().hex[:8]}", "rotating")
    s, t = sendout.scheduler, sendout.tracker
    r = httpx.post(f"{s}/admin/users/{user['user_id']}/tokens", headers=admin)
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["token"] != user["token"] and second["user_id"] == user["user_id"]
    sendout.wait_token_known(second["token"])
    for token in (user["token"], second["token"]):
        assert httpx.get(f"{s}/campaigns", headers={"Authorization": f"Bearer {token}"}) \
            .status_code == 200
    # Without the admin token nothing changes.
    assert httpx.delete(f"{s}/admin/users/{user['user_id']}/tokens").status_code == 401
    assert httpx.delete(f"{s}/admin/users/{uuid.uuid4()}/tokens",
                        headers=admin).status_code == 404

    r = httpx.delete(f"{s}/admin/users/{user['user_id']}/tokens", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] == 2, r.text
    for token in (user["token"], second["token"]):
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{s}/campaigns", headers=auth).status_code == 401
        # The tracker learns the revocation from Kafka: within moments.
        deadline = time.monotonic() + 30
        while httpx.get(f"{t}/voters/0/history", headers=auth).status_code != 401:
            assert time.monotonic() < deadline, "the tracker still accepts a revoked token"
            time.sleep(0.05)
