"""Start Sendout's service processes (and the fake provider) on free ports, wait until they
are healthy, and stop exactly those processes. Used by the demo and the end-to-end tests."""

from __future__ import annotations

import ctypes
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the process that started us dies (Linux), so a test run
    killed midway leaves no orphans consuming from the shared topics."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, for a service to bind a moment later. Drawn below
    the kernel's ephemeral range (32768+ on Linux), where every outgoing connection — Kafka's,
    PostgreSQL's, HTTP clients' — takes its local port: a port from that range can be taken by
    one of them before the service binds it (seen in CI: "address already in use"). Never the
    same port twice in a process."""
    while True:
        port = random.randint(10_000, 32_000)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port


@dataclass
class Proc:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Processes:
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)
    stopped: set[str] = field(default_factory=set)

    def kill(self, name: str) -> None:
        """SIGKILL one process, as a crash would."""
        proc = self.by_name(name)
        proc.popen.kill()
        proc.popen.wait()
        self.stopped.add(name)

    def terminate(self, name: str, timeout: float = 60.0) -> int:
        """SIGTERM one process (a graceful stop), wait for it (SIGKILL after `timeout`) and
        forget it; its exit code."""
        proc = self.by_name(name)
        proc.popen.send_signal(signal.SIGTERM)
        try:
            code = proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            code = proc.popen.wait()
        self.procs.remove(proc)
        self.stopped.discard(name)
        return code

    def restart(self, name: str, timeout: float = 90.0) -> Proc:
        """Start a stopped (e.g. killed) process again: same command, environment and port;
        healthy on return."""
        old = self.by_name(name)
        if old.popen.poll() is None:
            raise RuntimeError(f"{name} is still running")
        self.procs.remove(old)
        self.stopped.discard(name)
        proc = self.start(name, old.args, old.env, old.port)
        self.wait_healthy(timeout)
        return proc

    def start(self, name: str, args: list[str], env: dict[str, str], port: int) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        proc = Proc(name, port, popen, log_path, list(args), dict(env))
        self.procs.append(proc)
        return proc

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        pending = [p for p in self.procs if p.popen.poll() is None or p.name not in self.stopped]
        while pending:
            for proc in list(pending):
                if proc.popen.poll() is not None:
                    raise RuntimeError(
                        f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}"
                    )
                try:
                    if httpx.get(f"{proc.url}/health", timeout=2).status_code == 200:
                        pending.remove(proc)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                raise RuntimeError(f"not healthy after {timeout}s: {names}\n{pending[0].tail()}")
            if pending:
                time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self.procs.clear()

    def by_name(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)


@dataclass
class Sendout:
    """The three services plus a fake HTTP provider (SMS) and an SMTP sink (email), as
    separate processes."""

    processes: Processes
    env: dict[str, str]
    scheduler: str
    tracker: str
    dispatchers: list[str]
    provider: str | None
    smtp: str | None
    # The console (web UI), when started (`console=True`).
    console: str | None = None
    # The operator's API token (user "operator" of organisation "default"), for every call.
    token: str = ""

    @property
    def admin_token(self) -> str:
        return self.env["SENDOUT_ADMIN_TOKEN"]

    @property
    def auth(self) -> dict[str, str]:
        """Headers of the operator's calls."""
        return {"Authorization": f"Bearer {self.token}"}

    def new_user(self, organisation: str, name: str, timeout: float = 30.0) -> dict[str, str]:
        """Create a user (and its organisation if new) through the admin API; return once the
        tracker knows the token too (it learns tokens from Kafka)."""
        r = httpx.post(f"{self.scheduler}/admin/users",
                       json={"organisation": organisation, "name": name},
                       headers={"X-Sendout-Admin-Token": self.admin_token}, timeout=30)
        r.raise_for_status()
        user: dict[str, str] = r.json()
        self.wait_token_known(user["token"], timeout)
        return user

    def wait_token_known(self, token: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        probe = f"{self.tracker}/voters/0/history"
        while True:
            r = httpx.get(probe, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            if r.status_code != 401:
                r.raise_for_status()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tracker did not learn the token in {timeout}s")
            time.sleep(0.05)

    def start_service(self, service: str, name: str | None = None,
                      extra_env: dict[str, str] | None = None) -> Proc:
        """One more service process (e.g. a second scheduler replica), healthy on return."""
        port = free_port()
        proc = self.processes.start(
            name or f"{service}-{port}", ["-m", f"services.{service}"],
            {**self.env, **(extra_env or {}), "SENDOUT_HTTP_PORT": str(port)}, port,
        )
        self.processes.wait_healthy()
        return proc


def start_sendout(
    *,
    kafka: str,
    database_url: str,
    log_dir: Path,
    fail_pattern: str | None = None,
    flaky_pattern: str | None = None,
    provider_latency_ms: float = 0.0,
    use_fakes: bool = True,
    dispatchers: int = 1,
    extra_env: dict[str, str] | None = None,
    email_via: str = "smtp",
    provider_args: list[str] | None = None,
    console: bool = False,
    console_port: int | None = None,
) -> Sendout:
    """`email_via`: `smtp` sends email to the SMTP sink, `http` to the fake HTTP provider.
    `provider_args`: more command-line options of the fake HTTP provider."""
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "DATABASE_URL": database_url,
        # The fake provider signs its delivery receipts with it.
        "SENDOUT_RECEIPTS_SECRET": secrets.token_hex(16),
        "SENDOUT_ADMIN_TOKEN": secrets.token_urlsafe(24),
        **(extra_env or {}),
    }
    # Known before the tracker starts: the fake provider posts receipts to it.
    tracker_port = free_port()
    procs = Processes(log_dir)
    try:
        dispatcher_env: dict[str, str] = {}
        provider_url = smtp_url = None
        if use_fakes:
            patterns: list[str] = []
            if fail_pattern:
                patterns += ["--fail-pattern", fail_pattern]
            if flaky_pattern:
                patterns += ["--flaky-pattern", flaky_pattern]
            receipts = ["--receipts-url", f"http://127.0.0.1:{tracker_port}/receipts",
                        "--receipts-secret", common["SENDOUT_RECEIPTS_SECRET"]]
            port = free_port()
            provider_url = procs.start(
                "fake-provider",
                ["-m", "devtools.fake_provider", "--port", str(port),
                 "--latency-ms", str(provider_latency_ms), *patterns, *receipts,
                 *(provider_args or [])],
                {}, port,
            ).url
            smtp_port, http_port = free_port(), free_port()
            smtp_url = procs.start(
                "fake-smtp",
                ["-m", "devtools.fake_smtp", "--smtp-port", str(smtp_port),
                 "--http-port", str(http_port), *patterns, *receipts],
                {}, http_port,
            ).url
            dispatcher_env = {
                "SENDOUT_EMAIL_PROVIDER": email_via,
                "SENDOUT_SMTP_HOST": "127.0.0.1",
                "SENDOUT_SMTP_PORT": str(smtp_port),
                "SENDOUT_SMS_PROVIDER": "http",
                "SENDOUT_PROVIDER_URL": provider_url,
            }
        # Migrations take an advisory lock, so services may start together.
        for name in ("scheduler", "tracker"):
            port = tracker_port if name == "tracker" else free_port()
            procs.start(name, ["-m", f"services.{name}"],
                        {**common, "SENDOUT_HTTP_PORT": str(port)}, port)
        for i in range(dispatchers):
            port = free_port()
            procs.start(f"dispatcher-{i + 1}", ["-m", "services.dispatcher"],
                        {**common, **dispatcher_env, "SENDOUT_HTTP_PORT": str(port)}, port)
        procs.wait_healthy()
        if console:
            # A client of the scheduler's and tracker's HTTP APIs only: started once they are up.
            port = console_port or free_port()
            procs.start("console", ["-m", "services.console"], {
                "SENDOUT_HTTP_PORT": str(port),
                "SENDOUT_SCHEDULER_URL": procs.by_name("scheduler").url,
                "SENDOUT_TRACKER_URL": procs.by_name("tracker").url,
                "SENDOUT_LOG_LEVEL": common.get("SENDOUT_LOG_LEVEL", "INFO"),
            }, port)
            procs.wait_healthy()
    except BaseException:
        procs.stop()
        raise
    sendout = Sendout(
        processes=procs,
        env={**common, **dispatcher_env},
        scheduler=procs.by_name("scheduler").url,
        tracker=procs.by_name("tracker").url,
        dispatchers=[p.url for p in procs.procs if p.name.startswith("dispatcher")],
        provider=provider_url,
        smtp=smtp_url,
        console=procs.by_name("console").url if console else None,
    )
    try:
        sendout.token = sendout.new_user("default", "operator")["token"]
    except BaseException:
        procs.stop()
        raise
    return sendout
