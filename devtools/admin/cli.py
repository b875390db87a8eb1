"""Operate Sendout from a terminal, through the services' HTTP APIs.

    ./sendout admin users create ORGANISATION NAME      (or: sendout-admin ...)
    ./sendout admin tokens add USER_ID | tokens revoke USER_ID
    ./sendout admin campaigns list [--state S]
    ./sendout admin campaigns watch ID                  live progress bar until it ends
    ./sendout admin campaigns abort ID
    ./sendout admin campaigns report ID [-o FILE]       the recipient report (CSV)
    ./sendout admin dlq list | dlq replay ...           dead letters (devtools.dlq)

Addresses and tokens come from flags or the environment: SENDOUT_SCHEDULER_URL
(http://127.0.0.1:8001), SENDOUT_TRACKER_URL (http://127.0.0.1:8003), SENDOUT_ADMIN_TOKEN (the
scheduler's admin token: users and tokens), SENDOUT_TOKEN (a user's API token: campaigns),
KAFKA_BOOTSTRAP_SERVERS (dead letters). An error of the services (4xx/5xx) or an unreachable
service is one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from devtools import dlq as dlq_tool

DEFAULT_SCHEDULER = "http://127.0.0.1:8001"
DEFAULT_TRACKER = "http://127.0.0.1:8003"
FINAL_STATES = ("completed", "aborted")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(Exception):
    """What went wrong, in one line for the operator; `status`: the service's HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def seg(value: str) -> str:
    """An id as one path segment, whatever the operator typed."""
    return quote(value, safe="")


@dataclass
class Api:
    """The services' addresses and the caller's tokens."""

    scheduler: str
    tracker: str
    token: str | None
    admin_token: str | None
    timeout: float

    def _headers(self, admin: bool) -> dict[str, str]:
        if admin:
            if not self.admin_token:
                raise CliError("no admin token: give --admin-token or set SENDOUT_ADMIN_TOKEN "
                               "(the scheduler's SENDOUT_ADMIN_TOKEN)")
            return {"X-Sendout-Admin-Token": self.admin_token}
        if not self.token:
            raise CliError("no API token: give --token or set SENDOUT_TOKEN "
                           "(`users create` prints one)")
        return {"Authorization": f"Bearer {self.token}"}

    def _base(self, service: str) -> str:
        return (self.scheduler if service == "scheduler" else self.tracker).rstrip("/")

    def call(self, method: str, service: str, path: str, *, admin: bool = False,
             json: Any = None, params: dict[str, Any] | None = None) -> Any:
        url = self._base(service) + path
        with translate_errors(service, url):
            r = httpx.request(method, url, json=json, params=params,
                              headers=self._headers(admin), timeout=self.timeout)
            check(r, service)
            try:
                return r.json()
            except ValueError:
                raise CliError(f"the {service} at {url} answered {r.status_code} without JSON: "
                               f"is that address the {service}?") from None

    @contextmanager
    def stream(self, service: str, path: str) -> Iterator[httpx.Response]:
        url = self._base(service) + path
        with translate_errors(service, url), httpx.stream(
            "GET", url, headers=self._headers(False), timeout=self.timeout
        ) as r:
            if r.status_code >= 400:
                r.read()
            check(r, service)
            yield r


@contextmanager
def translate_errors(service: str, url: str) -> Iterator[None]:
    try:
        yield
    except httpx.ConnectError as exc:
        raise CliError(f"cannot reach the {service} at {url} ({exc}); is it running? "
                       f"(--{service} or SENDOUT_{service.upper()}_URL)") from None
    except httpx.TimeoutException:
        raise CliError(f"the {service} did not answer in time ({url})") from None
    except httpx.HTTPError as exc:
        raise CliError(f"calling the {service} at {url} failed: {exc}") from None


def detail_of(r: httpx.Response) -> str:
    """The service's own words for an error: FastAPI's `detail` (a text, a {message}, or a
    list of validation errors), else the body."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:300] or r.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        return str(detail.get("message") or detail)
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: {e.get('msg', e)}"
            if isinstance(e, dict) else str(e) for e in detail)
    return str(detail)


def check(r: httpx.Response, service: str) -> None:
    if r.status_code < 400:
        return
    hint = ""
    if r.status_code == 401:
        hint = (" (check --admin-token / SENDOUT_ADMIN_TOKEN)" if "/admin/" in r.url.path else
                " (check --token / SENDOUT_TOKEN; a new token reaches the tracker within a "
                "second)")
    raise CliError(f"the {service} answered {r.status_code}: {detail_of(r)}{hint}",
                   r.status_code)


def api_of(ctx: typer.Context) -> Api:
    obj = ctx.find_root().obj
    assert isinstance(obj, Api)
    return obj


def run(action: Any) -> Any:
    try:
        return action()
    except CliError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None


app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Operate Sendout: users and tokens, campaigns, progress, reports, "
                       "dead letters.")
users = typer.Typer(no_args_is_help=True, help="Users of an organisation (admin token).")
tokens = typer.Typer(no_args_is_help=True, help="Users' API tokens (admin token).")
campaigns = typer.Typer(no_args_is_help=True, help="Campaigns of the token's organisation.")
dlq = typer.Typer(no_args_is_help=True, help="Dead letters on <topic>.dlq (Kafka).")
app.add_typer(users, name="users")
app.add_typer(tokens, name="tokens")
app.add_typer(campaigns, name="campaigns")
app.add_typer(dlq, name="dlq")


@app.callback()
def options(
    ctx: typer.Context,
    scheduler: Annotated[str, typer.Option(envvar="SENDOUT_SCHEDULER_URL",
                                           help="The scheduler's address.")] = DEFAULT_SCHEDULER,
    tracker: Annotated[str, typer.Option(envvar="SENDOUT_TRACKER_URL",
                                         help="The tracker's address.")] = DEFAULT_TRACKER,
    token: Annotated[str | None, typer.Option(envvar="SENDOUT_TOKEN", show_default=False,
                                              help="A user's API token.")] = None,
    admin_token: Annotated[str | None, typer.Option(
        envvar="SENDOUT_ADMIN_TOKEN", show_default=False,
        help="The scheduler's admin token.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 30.0,
) -> None:
    ctx.obj = Api(scheduler, tracker, token, admin_token, timeout)


def show_user(answer: dict[str, Any]) -> None:
    for key in ("user_id", "organisation_id", "name", "token", "revoked"):
        if key in answer:
            out.print(f"{key + ':':17}{answer[key]}")
    if "token" in answer:
        err.print("[dim]The token is shown only now: keep it (e.g. export SENDOUT_TOKEN=...).[/]")


@users.command("create")
def users_create(
    ctx: typer.Context,
    organisation: Annotated[str, typer.Argument(help="Created if new.")],
    name: Annotated[str, typer.Argument(help="The user's name (an existing one: a new token).")],
    password: Annotated[str | None, typer.Option(
        help="Lets the user sign in to the console.")] = None,
    email: Annotated[str | None, typer.Option(help="Console sign-in by e-mail.")] = None,
) -> None:
    """Create a user (and the organisation if new); prints the user's first API token."""
    body: dict[str, Any] = {"organisation": organisation, "name": name}
    if password:
        body["password"] = password
    if email:
        body["email"] = email
    api = api_of(ctx)
    show_user(run(lambda: api.call("POST", "scheduler", "/admin/users", admin=True, json=body)))


@tokens.command("add")
def tokens_add(ctx: typer.Context, user_id: str) -> None:
    """A further API token for a user (rotate: add, switch, then revoke)."""
    api = api_of(ctx)
    show_user(run(lambda: api.call("POST", "scheduler", f"/admin/users/{seg(user_id)}/tokens",
                                   admin=True)))


@tokens.command("revoke")
def tokens_revoke(ctx: typer.Context, user_id: str) -> None:
    """Revoke every API token of a user, in every service."""
    api = api_of(ctx)
    show_user(run(lambda: api.call("DELETE", "scheduler", f"/admin/users/{seg(user_id)}/tokens",
                                   admin=True)))


@campaigns.command("list")
def campaigns_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(
        help="Only these: draft, scheduled, sending, aborting, aborted, completed.")] = None,
) -> None:
    """The organisation's campaigns (newest first, at most 500)."""
    api = api_of(ctx)
    answer = run(lambda: api.call("GET", "scheduler", "/campaigns",
                                  params={"state": state} if state else None))
    rows = answer["campaigns"]
    if not rows:
        out.print("no campaigns" + (f" in state {state}" if state else ""))
        return
    table = Table(Column("id", no_wrap=True, min_width=36), "name", "kind", "channels", "state",
                  "recipients", "created")
    for c in rows:
        table.add_row(c["id"], c["name"], c["kind"], ",".join(c["channels"]), c["state"],
                      str(c["recipients"]), (c["created_at"] or "")[:19])
    wide(table)


def wide(table: Table) -> None:
    """A table whole when piped or captured (not cut at 80 columns); fitted at a terminal."""
    if out.is_terminal:
        out.print(table)
    else:
        Console(highlight=False, width=200).print(table)


def counts_table(p: dict[str, Any]) -> Table:
    keys = ("total", "pending", "completed", "failed", "skipped", "delivered", "not_delivered")
    table = Table(*keys, title=f"campaign {p['campaign_id']}: {p['state']}")
    table.add_row(*(str(p[k]) for k in keys))
    return table


@campaigns.command("watch")
def campaigns_watch(
    ctx: typer.Context,
    campaign_id: str,
    interval: Annotated[float, typer.Option(help="Seconds between reads.")] = 0.5,
    timeout: Annotated[float | None, typer.Option(
        show_default=False, help="Give up after this many seconds (default: never).")] = None,
) -> None:
    """Follow a campaign's progress with a live bar until it is completed or aborted."""
    api = api_of(ctx)
    final = run(lambda: watch(api, campaign_id, interval, timeout))
    wide(counts_table(final))
    reasons = {f"{status}: {reason}": n for status, by in final.get("reasons", {}).items()
               for reason, n in by.items()}
    for what, n in sorted(reasons.items()):
        out.print(f"  {what} {n}")


def watch(api: Api, campaign_id: str, interval: float, timeout: float | None) -> dict[str, Any]:
    # The campaign must exist (a clear 404 otherwise); the tracker knows it once it started.
    campaign = api.call("GET", "scheduler", f"/campaigns/{seg(campaign_id)}")
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
        TextColumn("pending {task.fields[pending]} · [green]completed {task.fields[sent]}[/]"
                   " · [red]failed {task.fields[failed]}[/] · [yellow]skipped "
                   "{task.fields[skipped]}[/]"),
        TimeElapsedColumn(),
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    with Progress(*columns, console=err, refresh_per_second=10) as bar:
        task = bar.add_task(f"{campaign['name']} ({campaign['state']})", total=None,
                            pending="?", sent=0, failed=0, skipped=0)
        while True:
            p = progress_or_none(api, campaign_id)
            if p is not None:
                done = p["completed"] + p["failed"] + p["skipped"]
                bar.update(task, description=f"{campaign['name']} ({p['state']})",
                           total=p["total"], completed=done, pending=p["pending"],
                           sent=p["completed"], failed=p["failed"], skipped=p["skipped"])
                if p["state"] in FINAL_STATES:
                    return p
            if deadline is not None and time.monotonic() > deadline:
                raise CliError(f"campaign {campaign_id} did not end in {timeout:g} s"
                               + (f" ({p['state']}, {p['pending']} pending)" if p else
                                  " (not started)"))
            time.sleep(interval)


def progress_or_none(api: Api, campaign_id: str) -> dict[str, Any] | None:
    """The tracker's progress; None while it answers 404 (not started yet)."""
    try:
        return dict(api.call("GET", "tracker", f"/campaigns/{seg(campaign_id)}/progress"))
    except CliError as exc:
        if exc.status == 404:
            return None
        raise


@campaigns.command("abort")
def campaigns_abort(ctx: typer.Context, campaign_id: str) -> None:
    """Abort a sending campaign; answers once the dispatchers confirmed (or after 10 s)."""
    api = api_of(ctx)
    answer = run(lambda: api.call("POST", "scheduler", f"/campaigns/{seg(campaign_id)}/abort"))
    abort = answer.get("abort") or {}
    out.print(f"campaign {campaign_id}: {answer.get('state')}")
    if abort:
        out.print(f"acknowledged: {abort.get('acknowledged')} by "
                  f"{', '.join(abort.get('acknowledged_by') or []) or 'no dispatcher'}")
        if abort.get("message"):
            err.print(f"[yellow]{abort['message']}[/]")
        if not abort.get("acknowledged"):
            raise typer.Exit(1)


@campaigns.command("report")
def campaigns_report(
    ctx: typer.Context,
    campaign_id: str,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", show_default=False,
        help="File to write (default <id>-report.csv; - for stdout).")] = None,
) -> None:
    """Export the recipient report (CSV: per recipient and channel) to a file."""
    api = api_of(ctx)
    target = output or f"{campaign_id}-report.csv"
    rows = run(lambda: export_report(api, campaign_id, target))
    if target != "-":
        err.print(f"wrote {rows} row(s) to {target}")


def export_report(api: Api, campaign_id: str, target: str) -> int:
    """Streams the report; the file appears (whole) only once the download ended well."""
    lines = 0
    with api.stream("tracker", f"/campaigns/{seg(campaign_id)}/report.csv") as r:
        if target == "-":
            for chunk in r.iter_bytes():
                sys.stdout.buffer.write(chunk)
                lines += chunk.count(b"\n")
            sys.stdout.flush()
            return max(lines - 1, 0)
        path = Path(target)
        partial = path.with_name(path.name + ".partial")
        try:
            with partial.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
                    lines += chunk.count(b"\n")
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise CliError(f"the report download broke off: {exc}") from None
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise CliError(f"cannot write {target}: {exc}") from None
        partial.replace(path)
    return max(lines - 1, 0)  # the header line


BootstrapOption = Annotated[str | None, typer.Option(
    "--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS", show_default=False,
    help="Kafka's address.")]


def run_dlq(bootstrap: str | None, action: Any) -> None:
    """Runs one of devtools.dlq's commands; its errors (and Kafka's) as one line."""
    if not bootstrap:
        err.print("[bold red]error:[/] no Kafka address: give --bootstrap or set "
                  "KAFKA_BOOTSTRAP_SERVERS")
        raise typer.Exit(1)

    async def go() -> int:
        async with dlq_tool.Dlq(bootstrap) as d:
            return int(await action(d))

    from aiokafka.errors import KafkaError

    try:
        code = asyncio.run(go())
    except dlq_tool.DlqError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except KafkaError as exc:
        err.print(f"[bold red]error:[/] Kafka at {bootstrap}: {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@dlq.command("list")
def dlq_list(
    bootstrap: BootstrapOption = None,
    topic: Annotated[str | None, typer.Option(
        help="One topic, with or without .dlq (default: every .dlq topic with records).")]
    = None,
    limit: Annotated[int, typer.Option(min=1, help="At most N records.")] = 50,
) -> None:
    """Print dead letters, oldest first (as `./sendout dlq list`)."""
    run_dlq(bootstrap, lambda d: dlq_tool.list_records(d, topic, limit))


@dlq.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Option(help="The topic, with or without .dlq.")],
    bootstrap: BootstrapOption = None,
    offset: Annotated[str | None, typer.Option(
        help="One record: PARTITION:OFFSET, as `dlq list` prints it.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every record not yet replayed.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print what would be replayed.")] = False,
    again: Annotated[bool, typer.Option(help="Include records already replayed.")] = False,
) -> None:
    """Publish dead letters again to their original topic (as `./sendout dlq replay`)."""
    if (offset is None) == (not all_):
        err.print("[bold red]error:[/] give exactly one of --offset P:O and --all")
        raise typer.Exit(2)
    run_dlq(bootstrap, lambda d: dlq_tool.replay(d, topic, offset, dry_run=dry_run,
                                                 again=again))


def main() -> None:
    try:
        app(prog_name=os.environ.get("SENDOUT_ADMIN_PROG", "sendout-admin"))
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
