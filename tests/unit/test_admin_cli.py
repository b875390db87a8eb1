"""The operator CLI against a small fake HTTP server: what it sends, how it shows the services'
errors (one line, exit status 1, no traceback), a report that breaks off, and a watch that waits
for the tracker to learn of the campaign."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from devtools.admin.cli import app

CID = "6f1c2b9e-0d7a-4f57-9a57-2d1f6f0c1a11"


@dataclass
class Answer:
    status: int
    body: Any = None
    content_type: str = "application/json"
    # Announce more bytes than are sent, then close: a download that breaks off.
    truncated: bool = False


@dataclass
class Fake:
    url: str
    # (method, path) -> answers in order; the last one repeats.
    routes: dict[tuple[str, str], list[Answer]] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def answer(self, method: str, path: str) -> Answer:
        answers = self.routes.get((method, path))
        if not answers:
            return Answer(404, {"detail": "Not Found"})
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
def fake() -> Iterator[Fake]:
    state: dict[str, Fake] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def handle_any(self) -> None:
            size = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(size) if size else b""
            fake = state["fake"]
            fake.seen.append((self.command, self.path, dict(self.headers), body))
            a = fake.answer(self.command, self.path.split("?")[0])
            data = a.body if isinstance(a.body, bytes) else json.dumps(a.body).encode()
            self.send_response(a.status)
            self.send_header("content-type", a.content_type)
            self.send_header("content-length", str(len(data) + (1000 if a.truncated else 0)))
            self.end_headers()
            self.wfile.write(data)
            if a.truncated:
                self.close_connection = True

        do_GET = do_POST = do_DELETE = handle_any

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["fake"] = Fake(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["fake"]
    finally:
        server.shutdown()
        server.server_close()


def run(fake: Fake, *args: str, token: str = "tok", admin_token: str = "adm") -> Any:
    env = {"SENDOUT_SCHEDULER_URL": fake.url, "SENDOUT_TRACKER_URL": fake.url,
           "SENDOUT_TOKEN": token, "SENDOUT_ADMIN_TOKEN": admin_token}
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result


def test_users_create_sends_the_admin_token_and_prints_the_new_token(fake: Fake) -> None:
    fake.routes[("POST", "/admin/users")] = [Answer(201, {
        "user_id": "u-1", "organisation_id": "o-1", "name": "alice", "token": "secret-1"})]
    result = run(fake, "users", "create", "Org", "alice", "--password", "long enough")
    assert result.exit_code == 0, result.output
    assert "token:           secret-1" in result.stdout
    method, path, headers, body = fake.seen[0]
    assert (method, path) == ("POST", "/admin/users")
    assert headers["X-Sendout-Admin-Token"] == "adm"
    assert "Authorization" not in headers
    assert json.loads(body) == {"organisation": "Org", "name": "alice",
                                "password": "long enough"}


@pytest.mark.parametrize(("answer", "shown"), [
    (Answer(422, {"detail": [{"loc": ["body", "organisation"], "msg": "too short"}]}),
     "the scheduler answered 422: organisation: too short"),
    (Answer(409, {"detail": {"message": "campaign is completed: cannot abort"}}),
     "the scheduler answered 409: campaign is completed: cannot abort"),
    (Answer(409, {"detail": "cannot abort a draft campaign"}),
     "the scheduler answered 409: cannot abort a draft campaign"),
    (Answer(502, b"bad gateway\n", "text/plain"), "the scheduler answered 502: bad gateway"),
    (Answer(401, {"detail": "unknown token"}),
     "the scheduler answered 401: unknown token (check --token / SENDOUT_TOKEN"),
])
def test_a_service_error_is_one_line_with_the_services_words(
    fake: Fake, answer: Answer, shown: str
) -> None:
    fake.routes[("POST", f"/campaigns/{CID}/abort")] = [answer]
    result = run(fake, "campaigns", "abort", CID)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert shown in result.stderr
    assert result.stderr.count("\n") == 1


def test_an_unreachable_service_is_named_with_its_address() -> None:
    env = {"SENDOUT_SCHEDULER_URL": "http://127.0.0.1:9", "SENDOUT_TOKEN": "t"}
    result = CliRunner().invoke(app, ["campaigns", "list"], env=env)
    assert result.exit_code == 1
    assert "cannot reach the scheduler at http://127.0.0.1:9/campaigns" in result.stderr
    assert "Traceback" not in result.output


def test_a_report_that_breaks_off_leaves_no_file(fake: Fake, tmp_path: Path) -> None:
    fake.routes[("GET", f"/campaigns/{CID}/report.csv")] = [
        Answer(200, b"address,status\na@example.org,completed\n", "text/csv", truncated=True)]
    target = tmp_path / "r.csv"
    result = run(fake, "campaigns", "report", CID, "-o", str(target))
    assert result.exit_code == 1
    assert "the report download broke off" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_report_is_written_whole(fake: Fake, tmp_path: Path) -> None:
    csv_text = b"address,status\na@example.org,completed\nb@example.org,failed\n"
    fake.routes[("GET", f"/campaigns/{CID}/report.csv")] = [Answer(200, csv_text, "text/csv")]
    target = tmp_path / "r.csv"
    result = run(fake, "campaigns", "report", CID, "-o", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == csv_text
    assert f"wrote 2 row(s) to {target}" in result.stderr
    assert fake.seen[0][2]["Authorization"] == "Bearer tok"


def progress(state: str, pending: int, completed: int) -> Answer:
    return Answer(200, {"campaign_id": CID, "state": state, "total": 10, "pending": pending,
                        "completed": completed, "failed": 0, "skipped": 10 - pending - completed,
                        "delivered": 0, "not_delivered": 0,
                        "reasons": {"skipped": {"aborted": 10 - pending - completed}}})


def test_watch_waits_for_the_tracker_and_ends_with_the_campaign(fake: Fake) -> None:
    fake.routes[("GET", f"/campaigns/{CID}")] = [Answer(200, {"name": "C", "state": "sending"})]
    fake.routes[("GET", f"/campaigns/{CID}/progress")] = [
        Answer(404, {"detail": "not started"}), progress("sending", 10, 0),
        progress("aborting", 4, 3), progress("aborted", 0, 3)]
    result = run(fake, "campaigns", "watch", CID, "--interval", "0.01")
    assert result.exit_code == 0, result.output
    assert f"campaign {CID}: aborted" in result.stdout
    assert "skipped: aborted 7" in result.stdout
    reads = [p for m, p, *_ in fake.seen if p.endswith("/progress")]
    assert len(reads) == 4


def test_watch_gives_up_after_its_timeout(fake: Fake) -> None:
    fake.routes[("GET", f"/campaigns/{CID}")] = [Answer(200, {"name": "C", "state": "draft"})]
    fake.routes[("GET", f"/campaigns/{CID}/progress")] = [Answer(404, {"detail": "not started"})]
    result = run(fake, "campaigns", "watch", CID, "--interval", "0.01", "--timeout", "0.2")
    assert result.exit_code == 1
    assert f"campaign {CID} did not end in 0.2 s (not started)" in result.stderr


def test_commands_refuse_to_run_without_their_token(fake: Fake) -> None:
    assert "no admin token" in run(fake, "tokens", "add", "u", admin_token="").stderr
    assert "no API token" in run(fake, "campaigns", "list", token="").stderr
    assert fake.seen == []


def test_a_report_to_stdout(fake: Fake) -> None:
    csv_text = b"address,status\na@example.org,completed\n"
    fake.routes[("GET", f"/campaigns/{CID}/report.csv")] = [Answer(200, csv_text, "text/csv")]
    result = run(fake, "campaigns", "report", CID, "-o", "-")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == csv_text


def test_an_address_that_is_not_the_service_is_said_so(fake: Fake) -> None:
    fake.routes[("GET", "/campaigns")] = [Answer(200, b"<html>console</html>", "text/html")]
    result = run(fake, "campaigns", "list")
    assert result.exit_code == 1
    assert "answered 200 without JSON: is that address the scheduler?" in result.stderr


def test_an_id_stays_one_path_segment(fake: Fake) -> None:
    result = run(fake, "campaigns", "abort", "../admin/users")
    assert result.exit_code == 1 and "the scheduler answered 404" in result.stderr
    assert fake.seen[0][1] == "/campaigns/..%2Fadmin%2Fusers/abort"
