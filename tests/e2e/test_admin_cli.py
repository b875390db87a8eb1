"""The operator CLI (devtools/admin) against the real services: a user and tokens from the admin
API, a campaign listed, watched to its end and its report exported; an abort; the errors an
operator sees; and the `./sendout admin` entry point itself."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from devtools.admin.cli import app
from devtools.processes import ROOT, Sendout
from tests.e2e.helpers import add_recipients, create_campaign, wait_state

pytestmark = pytest.mark.e2e


def admin(sendout: Sendout, *args: str, token: str | None = None,
          admin_token: str | None = None) -> Any:
    """Runs the CLI in-process against the running services; the result (exit code, stdout,
    stderr)."""
    env = {"SENDOUT_SCHEDULER_URL": sendout.scheduler, "SENDOUT_TRACKER_URL": sendout.tracker,
           "SENDOUT_TOKEN": token or "", "SENDOUT_ADMIN_TOKEN": admin_token or ""}
    return CliRunner().invoke(app, list(args), env=env)


def field(output: str, name: str) -> str:
    match = re.search(rf"^{name}:\s+(\S+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def no_traceback(result: Any) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_an_operator_creates_a_user_and_tokens_watches_a_campaign_and_exports_its_report(
    sendout: Sendout, tmp_path: Path
) -> None:
    organisation = f"cli-{uuid.uuid4().hex[:8]}"
    made = admin(sendout, "users", "create", organisation, "alice",
                 admin_token=sendout.admin_token)
    assert made.exit_code == 0, made.output
    user_id, token = field(made.stdout, "user_id"), field(made.stdout, "token")
    sendout.wait_token_known(token)

    second = admin(sendout, "tokens", "add", user_id, admin_token=sendout.admin_token)
    assert second.exit_code == 0, second.output
    token2 = field(second.stdout, "token")
    assert token2 != token
    sendout.wait_token_known(token2)

    # The campaign itself is made through the API (the CLI operates campaigns, it does not
    # author them): 30 recipients, one without an address, two that the provider refuses.
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        cid = create_campaign(http, sendout, name="CLI watched")
        recipients: list[dict[str, Any]] = [
            {"email": f"v{i}@example.org", "first_name": f"V{i}"} for i in range(27)]
        recipients += [{"email": f"b{i}+bounce@example.org", "first_name": "B"}
                       for i in range(2)]
        recipients.append({"first_name": "Nobody"})
        add_recipients(http, sendout, cid, recipients)

        drafts = admin(sendout, "campaigns", "list", "--state", "draft", token=token2)
        assert drafts.exit_code == 0, drafts.output
        assert cid in drafts.stdout and "CLI watched" in drafts.stdout

        http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
        watched = admin(sendout, "campaigns", "watch", cid, "--interval", "0.1",
                        "--timeout", "120", token=token)
        assert watched.exit_code == 0, watched.output
        progress = http.get(f"{sendout.tracker}/campaigns/{cid}/progress").raise_for_status()
        final = progress.json()
    assert (final["state"], final["total"], final["pending"]) == ("completed", 30, 0)
    assert (final["completed"], final["failed"], final["skipped"]) == (27, 2, 1)
    # The final counts table, as the tracker has them.
    assert re.search(r"│\s*30\s*│\s*0\s*│\s*27\s*│\s*2\s*│\s*1\s*│", watched.stdout), \
        watched.stdout
    assert f"campaign {cid}: completed" in watched.stdout
    assert "skipped: missing_address 1" in watched.stdout

    # The scheduler learns of the end from the tracker's event, a moment after the progress.
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        wait_state(http, sendout, cid, {"completed"})
    done = admin(sendout, "campaigns", "list", "--state", "completed", token=token)
    assert done.exit_code == 0 and cid in done.stdout, done.output

    target = tmp_path / "report.csv"
    exported = admin(sendout, "campaigns", "report", cid, "-o", str(target), token=token)
    assert exported.exit_code == 0, exported.output
    assert "wrote 30 row(s)" in exported.stderr
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 30
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["completed"] * 27 + ["failed"] * 2 + ["skipped"]
    assert {r["address"] for r in rows if r["status"] == "failed"} == {
        "b0+bounce@example.org", "b1+bounce@example.org"}
    assert not list(tmp_path.glob("*.partial"))

    # Revoked tokens stop working, with a clear error.
    revoked = admin(sendout, "tokens", "revoke", user_id, admin_token=sendout.admin_token)
    assert revoked.exit_code == 0, revoked.output
    assert field(revoked.stdout, "revoked") == "2"
    refused = admin(sendout, "campaigns", "list", token=token)
    assert refused.exit_code == 1
    assert "the scheduler answered 401" in refused.stderr
    no_traceback(refused)


def test_abort_from_the_cli_and_watch_ends_aborted(sendout: Sendout, http: httpx.Client) -> None:
    assert sendout.provider
    cid = create_campaign(http, sendout, name="CLI aborted")
    add_recipients(http, sendout, cid, [{"email": f"a{i}@example.org", "first_name": "A"}
                                        for i in range(3000)])
    # A slow provider, so that the abort lands while messages are still pending.
    http.post(f"{sendout.provider}/config", json={"latency_ms": 200}).raise_for_status()
    try:
        http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
        wait_state(http, sendout, cid, {"sending"})
        aborted = admin(sendout, "campaigns", "abort", cid, token=sendout.token)
        assert aborted.exit_code == 0, aborted.output
        assert f"campaign {cid}: aborting" in aborted.stdout or \
            f"campaign {cid}: aborted" in aborted.stdout, aborted.stdout
        assert "acknowledged: True" in aborted.stdout
    finally:
        http.post(f"{sendout.provider}/config", json={"latency_ms": 0}).raise_for_status()
    watched = admin(sendout, "campaigns", "watch", cid, "--interval", "0.1", "--timeout", "120",
                    token=sendout.token)
    assert watched.exit_code == 0, watched.output
    assert f"campaign {cid}: aborted" in watched.stdout
    final = http.get(f"{sendout.tracker}/campaigns/{cid}/progress").raise_for_status().json()
    assert final["state"] == "aborted" and final["pending"] == 0
    assert final["reasons"]["skipped"].get("aborted", 0) > 0

    wait_state(http, sendout, cid, {"aborted"})
    again = admin(sendout, "campaigns", "abort", cid, token=sendout.token)
    assert again.exit_code == 1
    assert "the scheduler answered 409" in again.stderr and "aborted" in again.stderr
    no_traceback(again)


def test_the_operator_sees_one_line_errors_not_tracebacks(
    sendout: Sendout, tmp_path: Path
) -> None:
    unknown = str(uuid.uuid4())
    missing = admin(sendout, "campaigns", "watch", unknown, token=sendout.token)
    assert missing.exit_code == 1
    assert f"the scheduler answered 404: campaign {unknown} not found" in missing.stderr
    no_traceback(missing)

    never = tmp_path / "never.csv"
    report = admin(sendout, "campaigns", "report", unknown, "-o", str(never),
                   token=sendout.token)
    assert report.exit_code == 1 and "the tracker answered 404" in report.stderr
    assert list(tmp_path.iterdir()) == []

    bad_admin = admin(sendout, "users", "create", "x", "y", admin_token="wrong")
    assert bad_admin.exit_code == 1
    assert "the scheduler answered 401" in bad_admin.stderr
    assert "SENDOUT_ADMIN_TOKEN" in bad_admin.stderr

    invalid = admin(sendout, "users", "create", "", "y", admin_token=sendout.admin_token)
    assert invalid.exit_code == 1 and "the scheduler answered 422" in invalid.stderr, \
        invalid.output

    no_token = admin(sendout, "campaigns", "list")
    assert no_token.exit_code == 1 and "no API token" in no_token.stderr


def test_sendout_admin_entry_point(sendout: Sendout) -> None:
    """`./sendout admin` runs the CLI (here with nothing listening at the tracker's address)."""
    env = {**os.environ, "SENDOUT_TRACKER_URL": "http://127.0.0.1:9",
           "SENDOUT_SCHEDULER_URL": sendout.scheduler, "SENDOUT_TOKEN": sendout.token}
    listed = subprocess.run([str(ROOT / "sendout"), "admin", "campaigns", "list"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "id" in listed.stdout
    down = subprocess.run([sys.executable, "-m", "devtools.admin", "campaigns", "report",
                           str(uuid.uuid4()), "-o", "-"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1
    assert "cannot reach the tracker at http://127.0.0.1:9" in down.stderr
    assert "Traceback" not in down.stderr
