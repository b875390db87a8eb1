"""The console in a real browser: Debian's Chromium, headless, driven by Playwright, against
the real stack (Kafka, PostgreSQL, scheduler, dispatcher, tracker, console, fake providers).

Playwright never downloads a browser here: it is launched with executable_path=/usr/bin/chromium
(`./sendout test` installs Debian's package when it is missing). Under CI=true a missing
Chromium fails the run; elsewhere these tests are skipped without it.

Every test fails on a browser console error or an uncaught page error, and each screen a test
visits is checked with axe-core (vendored, tests/browser/vendor/axe.min.js): no serious or
critical violation.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.processes import Sendout, start_sendout
from devtools.up import Demo, create_person, seed
from tests.conftest import ROOT, Stack

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
# Where screenshots of each screen go: .sendout/screenshots; the README's, in docs/screenshots,
# are refreshed with SENDOUT_SCREENSHOTS=docs/screenshots ./sendout test tests/browser
SCREENSHOTS = ROOT / os.environ.get("SENDOUT_SCREENSHOTS", ".sendout/screenshots")
FAIL_PATTERN = r"\+bounce@"
PASSWORD = "correct horse battery"

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    if not CHROMIUM.exists():
        message = "Debian's Chromium is missing: apt-get install -y chromium"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    return {"executable_path": str(CHROMIUM), "args": args, "headless": True}


# pytest-playwright's Playwright, browser type and browser live for the whole session; here for
# this package only: a running sync Playwright keeps an event loop running in the main thread,
# which the tests after these (asyncio.run, pytest-asyncio) could not start theirs beside.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    yield pw
    pw.stop()


@pytest.fixture(scope="package")
def browser_type(playwright: Any, browser_name: str | None) -> Any:
    return getattr(playwright, browser_name or "chromium")


@pytest.fixture(scope="package")
def launch_browser(browser_type_launch_args: dict[str, Any], browser_type: Any) -> Any:
    def launch(**kwargs: Any) -> Any:
        return browser_type.launch(**{**browser_type_launch_args, **kwargs})

    return launch


@pytest.fixture(scope="package")
def browser(launch_browser: Any) -> Iterator[Any]:
    browser = launch_browser()
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def browser_context_args() -> dict[str, Any]:
    # A user in Copenhagen: the schedule form must read times in the user's time zone.
    return {"viewport": {"width": 1280, "height": 900}, "timezone_id": "Europe/Copenhagen",
            "accept_downloads": True}


@dataclass
class Env:
    sendout: Sendout
    demo: Demo
    other: Demo

    @property
    def console(self) -> str:
        assert self.sendout.console
        return self.sendout.console

    def api(self, method: str, path: str, token: str | None = None, service: str = "scheduler",
            **kwargs: Any) -> Any:
        base = self.sendout.scheduler if service == "scheduler" else self.sendout.tracker
        r = httpx.request(method, f"{base}{path}", timeout=60,
                          headers={"Authorization": f"Bearer {token or self.demo.token}",
                                   **kwargs.pop("headers", {})}, **kwargs)
        assert r.status_code < 400, r.text
        return r.json() if r.content else None

    def campaign(self, name: str, csv: str, *, channels: tuple[str, ...] = ("email",),
                 kind: str = "mass", token: str | None = None,
                 demo: Demo | None = None) -> str:
        demo = demo or self.demo
        c = self.api("POST", "/campaigns", token or demo.token, json={
            "name": name, "kind": kind, "channels": list(channels),
            "sender_id": demo.sender_id, "template_id": demo.template_id})
        self.api("POST", f"/campaigns/{c['id']}/recipients.csv", token or demo.token,
                 content=csv, headers={"Content-Type": "text/csv"})
        return str(c["id"])

    def texter(self, name: str) -> dict[str, str]:
        """Another user of the demo organisation who signs in with a password."""
        return create_person(self.sendout, self.demo.organisation, name, PASSWORD)

    def provider_requests(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.sendout.provider}/requests", timeout=30)
        return list(r.json()["requests"])

    def provider_config(self, **body: Any) -> None:
        httpx.post(f"{self.sendout.provider}/config", json=body, timeout=30).raise_for_status()

    def wait_progress(self, cid: str, done: Any, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.get(f"{self.sendout.tracker}/campaigns/{cid}/progress", timeout=30,
                          headers={"Authorization": f"Bearer {self.demo.token}"})
            if r.status_code == 200 and done(r.json()):
                return dict(r.json())
            assert time.monotonic() < deadline, f"progress did not settle: {r.text}"
            time.sleep(0.2)


# Package scope: its dispatcher must be gone before other tests' services share the topics.
@pytest.fixture(scope="package")
def env(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # SMS and email through the fake HTTP provider, whose /requests lists every message; a
    # small concurrency, so a send-out lasts long enough to watch and to abort.
    sendout = start_sendout(
        kafka=stack.kafka, database_url=stack.database_url,
        log_dir=tmp_path_factory.mktemp("browser-logs"), email_via="http",
        fail_pattern=FAIL_PATTERN, console=True, provider_latency_ms=5,
        extra_env={"SENDOUT_CONCURRENCY": "4"},
    )
    # Names of this run: the database may hold earlier runs' organisations and users.
    run = uuid.uuid4().hex[:8]
    try:
        demo = seed(sendout, organisation=f"Demo Election Office {run}", name=f"demo-{run}",
                    password="sendout-demo", email=f"demo-{run}@example.org", voters=120)
        other = seed(sendout, organisation=f"Other Office {run}", name=f"other-{run}",
                     password="other-password", email=f"other-{run}@example.org", voters=5)
        yield Env(sendout, demo, other)
    finally:
        sendout.processes.stop()


@dataclass
class Ui:
    """The page, with what the test allows to show up in the browser's console."""

    page: Any
    env: Env
    errors: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def go(self, path: str) -> Any:
        return self.page.goto(self.env.console + path)

    def sign_in(self, login: str | None = None, password: str | None = None) -> None:
        login = login or self.env.demo.login
        password = password or self.env.demo.password
        self.go("/sign-in")
        self.page.get_by_label("User name or e-mail").fill(login)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()

    def a11y(self) -> None:
        """axe-core on the current screen: no serious or critical violation."""
        if not self.page.evaluate("() => typeof window.axe !== 'undefined'"):
            self.page.evaluate(AXE.read_text())
        violations = self.page.evaluate(
            """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => ({id: v.id, impact: v.impact, help: v.help,
                             nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"""
        )
        assert violations == [], f"accessibility violations on {self.page.url}: {violations}"

    def shot(self, name: str, *, full_page: bool = True) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


@pytest.fixture
def ui(page: Any, env: Env) -> Iterator[Ui]:
    ui = Ui(page, env)

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            text = f"{msg.text} ({msg.location.get('url', '')})"
            if not any(re.search(a, text) for a in ui.allowed):
                ui.errors.append(text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: ui.errors.append(f"page error: {exc}"))
    page.set_default_timeout(15_000)
    yield ui
    assert ui.errors == [], f"browser console errors: {ui.errors}"
