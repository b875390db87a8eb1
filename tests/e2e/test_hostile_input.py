"""Hostile and messy input answers 4xx naming what is wrong, never 5xx (issue 15's findings)."""

from __future__ import annotations

import csv
import io
import json
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from devtools.processes import Sendout
from shared import webhooks
from tests.e2e.conftest import ADMIN_TOKEN, INBOUND_SMS_SECRET, wait_for_completion
from tests.e2e.helpers import sender_and_template

pytestmark = pytest.mark.e2e

ABOVE_INT64 = 2**63  # 9223372036854775808


def _raw_json(http: httpx.Client, url: str, text: str) -> httpx.Response:
    """POST a JSON text as written (escapes such as \\u0000 and \\ud800 kept verbatim)."""
    return http.post(url, content=text.encode(), headers={"content-type": "application/json"})


def _assert_names_nul(r: httpx.Response) -> None:
    assert r.status_code == 422, (r.status_code, r.text)
    assert "NUL" in r.text, r.text


def test_nul_in_any_text_field_is_refused_naming_the_field(
    sendout: Sendout, http: httpx.Client
) -> None:
    s = sendout.scheduler
    sender, template = sender_and_template(http, sendout, email_subject="Hi",
                                           email_body="Vote", sms_body="Vote")
    cid = http.post(f"{s}/campaigns", json={
        "name": "nul", "channels": ["email"], "sender_id": sender, "template_id": template,
    }).raise_for_status().json()["id"]
    bodies = {
        "/senders": '{"name": "a\\u0000b"}',
        "/templates": '{"name": "t", "email_subject": "x\\u0000", "email_body": "b"}',
        "/lists": '{"name": "l\\u0000"}',
        "/opt-outs": '{"address": "a\\u0000@example.org"}',
        "/campaigns": json.dumps({"name": "c\0", "channels": ["email"],
                                  "sender_id": sender, "template_id": template}),
        f"/campaigns/{cid}/recipients":
            '{"recipients": [{"email": "v@example.org", "attributes": {"k\\u0000": "v"}}]}',
        "/voters": '{"email": "v@example.org", "last_name": "\\u0000"}',
    }
    for path, text in bodies.items():
        r = _raw_json(http, f"{s}{path}", text)
        _assert_names_nul(r)
        assert r.json()["detail"][0]["loc"][0] == "body", (path, r.text)

    r = http.post(f"{s}/campaigns/{cid}/recipients.csv",
                  content=b"email,first_name\nv@example.org,A\x00B\n",
                  headers={"content-type": "text/csv"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["line"] == 2 and "NUL" in r.json()["errors"][0]["error"]

    r = http.get(f"{s}/campaigns", params={"state": "\0"})
    _assert_names_nul(r)
    assert r.json()["detail"][0]["loc"] == ["query", "state"]
    _assert_names_nul(http.get(f"{s}/voters", params={"q": "a\0b"}))


def test_lone_surrogate_is_refused(sendout: Sendout, http: httpx.Client) -> None:
    r = _raw_json(http, f"{sendout.scheduler}/voters",
                  '{"first_name": "\\ud800", "email": "surrogate@example.org"}')
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "first_name"]
    assert "surrogate" in r.json()["detail"][0]["msg"]


def test_integers_above_int64_are_client_errors(sendout: Sendout, http: httpx.Client) -> None:
    s, t = sendout.scheduler, sendout.tracker
    sender, template = sender_and_template(http, sendout, email_subject="Hi",
                                           email_body="Vote", sms_body="Vote")
    cid = uuid.uuid4()
    big = ABOVE_INT64
    calls = [
        ("GET", f"{s}/voters/{big}", None),
        ("GET", f"{s}/voters/{big}/export", None),
        ("PATCH", f"{s}/voters/{big}", {"first_name": "x"}),
        ("DELETE", f"{s}/voters/{big}", None),
        ("POST", f"{s}/voters/{big}/send",
         {"channels": ["email"], "sender_id": sender, "template_id": template}),
        ("GET", f"{s}/voters?after={big}", None),
        ("GET", f"{s}/campaigns/{cid}/p2p/recipients?after={big}", None),
        ("POST", f"{s}/campaigns/{cid}/recipients/{big}/send", None),
        ("POST", f"{s}/lists/{uuid.uuid4()}/voters", {"voter_ids": [big]}),
        ("GET", f"{t}/voters/{big}/history", None),
        ("GET", f"{t}/campaigns/{cid}/recipients?after={big}", None),
    ]
    for method, url, body in calls:
        r = http.request(method, url, json=body)
        assert r.status_code in (404, 422), (method, url, r.status_code, r.text)


def test_repeated_channels_are_refused(sendout: Sendout, http: httpx.Client) -> None:
    s = sendout.scheduler
    sender, template = sender_and_template(http, sendout, email_subject="Hi",
                                           email_body="Vote", sms_body="Vote")
    phone = f"+4540{100_000 + uuid.uuid4().int % 900_000}"
    r = http.post(f"{s}/voters", json={"phone": phone})
    assert r.status_code == 201, r.text
    voter = r.json()
    for url, extra in ((f"{s}/individual-sends", {"recipient": {"phone": phone}}),
                       (f"{s}/voters/{voter['id']}/send", {})):
        r = http.post(url, json={"channels": ["sms", "sms"], "sender_id": sender,
                                 "template_id": template, **extra})
        assert r.status_code == 422, (url, r.text)
        assert "repeat" in r.text


def test_header_secrets_of_any_bytes_are_compared_safely(
    sendout: Sendout, http: httpx.Client
) -> None:
    r = httpx.post(f"{sendout.scheduler}/admin/users", json={"organisation": "o", "name": "n"},
                   headers={"X-Sendout-Admin-Token": "æøå".encode()})
    assert r.status_code == 401, r.text
    stamp = str(int(time.time()))
    for url in (f"{sendout.tracker}/receipts",
                f"{sendout.scheduler}/organisations/{uuid.uuid4()}/inbound-sms"):
        r = httpx.post(url, content=b"{}", headers={
            webhooks.TIMESTAMP_HEADER: stamp, webhooks.SIGNATURE_HEADER: "sha256=é".encode(),
            "content-type": "application/json"})
        assert r.status_code == 401, (url, r.text)


def test_signed_inbound_sms_for_an_unknown_organisation_is_404(
    sendout: Sendout, http: httpx.Client
) -> None:
    path = f"/organisations/{uuid.uuid4()}/inbound-sms"
    r = http.post(f"{sendout.scheduler}{path}",
                  **_signed_inbound(path, {"from": "+4540999016", "body": "STOP"}))
    assert r.status_code == 404, r.text


def _signed_inbound(path: str, payload: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    return {"content": body, "headers": {
        "content-type": "application/json",
        **webhooks.sign(INBOUND_SMS_SECRET.encode(), "POST", path, body)}}


def test_admin_token_still_works(sendout: Sendout) -> None:
    r = httpx.post(f"{sendout.scheduler}/admin/users",
                   json={"organisation": "hostile", "name": "admin-check"},
                   headers={"X-Sendout-Admin-Token": ADMIN_TOKEN})
    assert r.status_code == 201, r.text


def _organisation(name: str) -> str:
    return str(httpx.post(ADMIN_URL[0] + "/admin/users",
                          json={"organisation": name, "name": "webhook-check"},
                          headers={"X-Sendout-Admin-Token": ADMIN_TOKEN}
                          ).raise_for_status().json()["organisation_id"])


ADMIN_URL: list[str] = []


def test_inbound_sms_signed_for_one_organisation_is_refused_at_another_and_once_only(
    sendout: Sendout, http: httpx.Client
) -> None:
    ADMIN_URL[:] = [sendout.scheduler]
    org_a, org_b = _organisation(f"a-{uuid.uuid4()}"), _organisation(f"b-{uuid.uuid4()}")
    path_a = f"/organisations/{org_a}/inbound-sms"
    signed = _signed_inbound(path_a, {"from": "+4540999017", "body": "STOP"})
    r = http.post(f"{sendout.scheduler}/organisations/{org_b}/inbound-sms", **signed)
    assert r.status_code == 401 and "signature" in r.text, r.text
    r = http.post(f"{sendout.scheduler}{path_a}", **signed)
    assert r.status_code == 200 and r.json()["opted_out"] is True, r.text
    r = http.post(f"{sendout.scheduler}{path_a}", **signed)
    assert r.status_code == 401 and "replayed" in r.text, r.text


def test_a_receipt_is_accepted_once(sendout: Sendout, http: httpx.Client) -> None:
    secret = sendout.env["SENDOUT_RECEIPTS_SECRET"].encode()
    body = json.dumps({"provider_message_id": f"hostile-{uuid.uuid4()}", "status": "delivered",
                       "at": "2026-11-23T09:00:00Z"}).encode()
    headers = {"content-type": "application/json",
               **webhooks.sign(secret, "POST", "/receipts", body)}
    first = http.post(f"{sendout.tracker}/receipts", content=body, headers=headers)
    assert first.status_code == 202, first.text
    again = http.post(f"{sendout.tracker}/receipts", content=body, headers=headers)
    assert again.status_code == 401 and "replayed" in again.text, again.text


def test_report_csv_cells_never_start_a_formula(sendout: Sendout, http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    hostile = [f"=cmd|'/Ccalc'!A0{tag}@example.com", f"=1+1{tag}@example.com",
               f"-2+3{tag}@example.com", f"+1{tag}@example.com"]
    plain = f"plain-{tag}@example.com"
    cid = http.post(f"{sendout.scheduler}/campaigns", json={
        "name": "CSV injection", "channels": ["email"], "subject": "Hi", "template": "Vote",
        "sender": {"name": "Office", "email": "office@example.org"},
    }).raise_for_status().json()["id"]
    http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients", json={"recipients": [
        {"email": e} for e in [*hostile, plain]]}).raise_for_status()
    http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
    wait_for_completion(http, sendout.tracker, cid)
    text = http.get(f"{sendout.tracker}/campaigns/{cid}/report.csv").raise_for_status().text
    rows = list(csv.DictReader(io.StringIO(text)))
    addresses = sorted(row["address"] for row in rows)
    assert addresses == sorted(["'" + e for e in hostile] + [plain]), addresses
    for row in rows:
        assert not any(str(v).startswith(("=", "+", "-", "@", "\t", "\r"))
                       for v in row.values()), row


def _answer_to_headers_alone(base: str, path: str, length: int,
                             headers: dict[str, str] | None = None) -> str:
    """Send only a request's headers (declaring `length` bytes of body, none sent) and read
    the answer: a server that waited for the body would not answer within the timeout."""
    host, port = urlsplit(base).hostname, urlsplit(base).port
    assert host and port
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {length}",
             "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return sock.recv(65536).decode("latin-1").split("\r\n", 1)[0]


def test_large_or_unauthenticated_bodies_are_refused_before_they_are_read(
    sendout: Sendout, http: httpx.Client
) -> None:
    s, t = sendout.scheduler, sendout.tracker
    fifty_mb = 50 * 1024 * 1024
    cid = uuid.uuid4()
    # Over the endpoint's limit: 413 from Content-Length, token or not.
    assert " 413 " in _answer_to_headers_alone(s, "/senders", fifty_mb)
    assert " 413 " in _answer_to_headers_alone(t, "/receipts", fifty_mb)
    assert " 413 " in _answer_to_headers_alone(
        s, f"/organisations/{cid}/inbound-sms", fifty_mb)
    # Within a large limit but without a valid token: 401 before the body.
    for path in (f"/campaigns/{cid}/recipients.csv", f"/campaigns/{cid}/recipients",
                 "/voters.csv"):
        assert " 401 " in _answer_to_headers_alone(s, path, fifty_mb), path
        assert " 401 " in _answer_to_headers_alone(
            s, path, fifty_mb, {"Authorization": "Bearer so_forged"}), path
    # Unsigned webhooks: 401 from the headers, before the body.
    assert " 401 " in _answer_to_headers_alone(t, "/receipts", 500_000)
    assert " 401 " in _answer_to_headers_alone(
        s, f"/organisations/{cid}/inbound-sms", 10_000)
    # With a token the body is read, and refused by its content, not its size.
    r = http.post(f"{s}/campaigns/{cid}/recipients", json={"recipients": [{"email": "x"}]})
    assert r.status_code == 404, r.text


def test_a_422_never_echoes_more_than_an_excerpt(sendout: Sendout, http: httpx.Client) -> None:
    r = http.post(f"{sendout.scheduler}/senders", json={"name": "n" * 900_000})
    assert r.status_code == 422, r.text[:200]
    assert len(r.content) < 2000 and "900000 characters" in r.text


def test_semicolon_separated_windows_1252_files_import_with_every_letter(
    sendout: Sendout, http: httpx.Client
) -> None:
    """Excel's "CSV" in Denmark: semicolons, Windows-1252."""
    s = sendout.scheduler
    tag = uuid.uuid4().hex[:8]
    phones = [f"+4540{100_000 + uuid.uuid4().int % 900_000}" for _ in range(2)]
    body = (f"external_id;first_name;last_name;phone\n{tag}-1;Søren;Ærø;{phones[0]}\n"
            f"{tag}-2;Åse;Müller;{phones[1]}\n").encode("cp1252")
    r = http.post(f"{s}/voters.csv", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert (r.json()["inserted"], r.json()["rejected"]) == (2, 0), r.text
    assert r.json()["detected"] == {"encoding": "Windows-1252", "delimiter": "semicolon"}
    found = http.get(f"{s}/voters", params={"q": "Ærø"}).raise_for_status().json()["voters"]
    assert [(v["first_name"], v["last_name"]) for v in found
            if v["external_id"] == f"{tag}-1"] == [("Søren", "Ærø")]

    cid = http.post(f"{s}/campaigns", json={
        "name": "Texting", "kind": "p2p", "channels": ["sms"], "template": "Hi, vote!",
        "sender": {"name": "Office", "sms_sender_id": "Office"}}).raise_for_status().json()["id"]
    r = http.post(f"{s}/campaigns/{cid}/recipients.csv", content=body,
                  headers={"content-type": "text/csv"})
    assert r.status_code == 201, r.text
    assert r.json() == {"added": 2, "rejected": 0, "errors": [],
                        "detected": {"encoding": "Windows-1252", "delimiter": "semicolon"}}
    rows = http.get(f"{s}/campaigns/{cid}/p2p/recipients").raise_for_status().json()
    assert [(x["first_name"], x["last_name"]) for x in rows["recipients"]] == [
        ("Søren", "Ærø"), ("Åse", "Müller")]
