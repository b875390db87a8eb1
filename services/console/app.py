"""The console's pages: server-rendered (Jinja2, autoescaped), progressive enhancement by one
vendored script (static/console.js), live progress by Server-Sent Events. Every call to the
scheduler or the tracker carries the signed-in user's token, so every page is scoped to their
organisation: another organisation's ids are "not found" there, and a 404 page here."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import StrictUndefined
from jinja2.exceptions import TemplateError
from jinja2.sandbox import SandboxedEnvironment
from starlette.datastructures import FormData, UploadFile

from services.console.api import Api, ApiError, SignedOut
from services.console.sessions import COOKIE, FailedSignIns, Session, SessionStore
from services.console.settings import ConsoleSettings
from shared.observability import HttpMetrics
from shared.service import ops_router

HERE = Path(__file__).parent
SIGN_IN_COOKIE = "sendout_signin"
TOO_MANY_SIGN_INS = "Too many failed sign-ins. Wait a few minutes and try again."
STATES = ("draft", "scheduled", "sending", "aborting", "completed", "aborted")
OPEN_STATES = ("draft", "scheduled", "sending")
DONE_STATES = ("completed", "aborted")
IN_FLIGHT = ("sending", "aborting")
# A list page asks the tracker about this many campaigns in flight at most (one call each).
IN_FLIGHT_RECONCILED = 20
CHANNELS = ("email", "sms")
ALL_VIEW_PER_STATE = 25
SAMPLE_RECIPIENT = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org",
                    "phone": "+4512345678"}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


class NeedSignIn(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class NotFoundPage(Exception):
    pass


_preview_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def preview(text: str | None, variables: dict[str, Any]) -> tuple[str | None, str | None]:
    """(rendered, error) of a template text against a sample recipient; nothing is sent."""
    if not text:
        return None, None
    try:
        return _preview_env.from_string(text).render(**variables), None
    except TemplateError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def local_iso(value: str | None, tz: str) -> str:
    if not value:
        return ""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return datetime.fromisoformat(value).astimezone(zone).strftime("%Y-%m-%d %H:%M")


def shown_state(campaign_state: str, progress: dict[str, Any] | None) -> str:
    """The campaign's state in words that agree with its progress.

    The scheduler's state lags the tracker's: a campaign stays `aborting` (or `sending`) there
    until the tracker's "nothing pending" reaches it, while the tracker knows at once, and
    learns an abort a moment after the scheduler. An ended peer-to-peer campaign is the other
    way round: the scheduler says `completed` at once, while the tracker still counts the
    recipients nobody pressed SEND for. So: a finished state of the scheduler's stands; a
    campaign the tracker has settled is finished (aborted if either side saw the abort); else
    an abort either side saw shows as `aborting`, and a campaign the tracker saw start as
    `sending` (a page opened before its schedule came)."""
    if campaign_state in DONE_STATES or not progress:
        return campaign_state
    tracker_state, pending = progress.get("state"), progress.get("pending")
    if tracker_state in DONE_STATES or (pending is not None and pending <= 0):
        aborted = "aborting" in (campaign_state, tracker_state) or tracker_state == "aborted"
        return "aborted" if aborted else "completed"
    if "aborting" in (campaign_state, tracker_state):
        return "aborting"
    if tracker_state == "sending":
        return "sending"
    return campaign_state


def progress_state(campaign_state: str, progress: dict[str, Any] | None) -> str:
    """The state the progress block shows: `shown_state`, or the tracker's `starting` while it
    waits for a sending campaign's totals."""
    shown = shown_state(campaign_state, progress)
    if shown == "sending" and progress and progress.get("state") == "starting":
        return "starting"
    return shown


def csv_partly_added(refused: int, added: int) -> str:
    """What the console says when some rows of an uploaded CSV were refused (listed below it)
    and the others added."""
    rows = "1 row of the CSV was" if refused == 1 else f"{refused} rows of the CSV were"
    others = ("its other recipient was" if added == 1 else
              "none of its other rows was" if added == 0 else
              f"its other {added} recipients were")
    return f"{rows} refused, listed below; {others} added."


def user_tz(request: Request) -> str:
    """The browser's time zone (its script sets the cookie), else UTC."""
    name = unquote(request.cookies.get("sendout_tz", "UTC"))
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return name


# complexity: the routes are closures over its settings and clients, counted in it; each is small
def create_app(settings: ConsoleSettings | None = None) -> FastAPI:  # noqa: C901
    settings = settings or ConsoleSettings()
    store = SessionStore(settings.session_idle_minutes * 60)
    failed_sign_ins = FailedSignIns()
    api = Api(settings.scheduler_url, settings.tracker_url)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.autoescape = True  # every value escaped, template text and recipients too
    templates.env.filters["local"] = local_iso
    templates.env.globals["progress_state"] = progress_state

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await api.close()

    app = FastAPI(title="Sendout console", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(HttpMetrics, service="console")

    async def upstream() -> dict[str, str]:
        for name, client in (("scheduler", api.scheduler), ("tracker", api.tracker)):
            r = await client.get("/health", timeout=3)
            if r.status_code != 200:
                raise RuntimeError(f"{name} answers {r.status_code}")
        return {"status": "ok"}

    app.include_router(ops_router({"apis": upstream}))

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if not request.url.path.startswith("/static"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    # --- plumbing ---------------------------------------------------------------------------

    def page(request: Request, name: str, session: Session | None, status: int = 200,
             **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request, name,
            {"session": session, "csrf": session.csrf if session else "",
             "flashes": session.take_flashes() if session else [],
             "tz": user_tz(request), **context},
            status_code=status,
        )

    def current(request: Request) -> Session:
        session = store.get(request.cookies.get(COOKIE))
        if session is None:
            raise NeedSignIn(request.url.path
                             + (f"?{request.url.query}" if request.url.query else ""))
        return session

    async def form_of(request: Request, session: Session) -> FormData:
        form = await request.form()
        presented = form.get("csrf") or request.headers.get("x-csrf-token")
        if not isinstance(presented, str) or not session.csrf_ok(presented):
            raise HTTPException(403, "the form expired or did not come from this site; reload "
                                     "the page and try again")
        return form

    async def call(session: Session, method: str, path: str, service: str = "scheduler",
                   **kwargs: Any) -> Any:
        try:
            return await api.call(session.token, service, method, path, **kwargs)
        except ApiError as exc:
            if exc.status == 404 and method == "GET":
                raise NotFoundPage() from exc
            raise

    def back(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    def wants_json(request: Request) -> bool:
        return "application/json" in request.headers.get("accept", "")

    @app.exception_handler(NeedSignIn)
    async def need_sign_in(request: Request, exc: NeedSignIn) -> Response:
        if request.url.path.endswith("/events") or wants_json(request):
            return Response("signed out", status_code=401)
        return back("/sign-in?" + urlencode({"next": exc.next_path}))

    @app.exception_handler(SignedOut)
    async def signed_out(request: Request, exc: SignedOut) -> Response:
        store.end(request.cookies.get(COOKIE))
        response = back("/sign-in?expired=1")
        response.delete_cookie(COOKIE)
        return response

    @app.exception_handler(NotFoundPage)
    async def not_found_page(request: Request, exc: NotFoundPage) -> Response:
        session = store.get(request.cookies.get(COOKIE))
        return page(request, "404.html", session, status=404)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        session = store.get(request.cookies.get(COOKIE))
        return page(request, "404.html", session, status=404)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        session = store.get(request.cookies.get(COOKIE))
        if exc.status_code == 404:
            return page(request, "404.html", session, status=404)
        if wants_json(request):
            return Response(json.dumps({"message": exc.detail}), status_code=exc.status_code,
                            media_type="application/json")
        return page(request, "error.html", session, status=exc.status_code,
                    message=str(exc.detail))

    # --- sign-in ----------------------------------------------------------------------------

    def safe_next(value: str | None) -> str:
        # Only a path of this site: never an open redirect.
        if value and value.startswith("/") and not value.startswith("//"):
            return value
        return "/campaigns"

    def sign_in_page(request: Request, *, next_path: str, error: str | None = None,
                     login: str = "", status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(24)
        response = page(request, "sign_in.html", None, status=status, signin_csrf=nonce,
                        next_path=next_path, error=error, login=login,
                        expired=request.query_params.get("expired"))
        response.set_cookie(SIGN_IN_COOKIE, nonce, httponly=True, samesite="lax",
                            secure=settings.secure_cookies, path="/sign-in")
        return response

    @app.get("/sign-in", response_class=HTMLResponse)
    async def sign_in_form(request: Request, next: str | None = None) -> Response:
        return sign_in_page(request, next_path=safe_next(next))

    def sign_in_refusal(request: Request, form: FormData, client: str) -> tuple[str, int] | None:
        """Why a sign-in is refused before its password is checked (message, status)."""
        cookie = request.cookies.get(SIGN_IN_COOKIE)
        if not cookie or not secrets.compare_digest(cookie, str(form.get("csrf") or "")):
            return "The form expired; please sign in again.", 403
        if failed_sign_ins.blocked(client):
            return TOO_MANY_SIGN_INS, 429
        return None

    @app.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        form = await request.form()
        next_path = safe_next(str(form.get("next") or ""))
        login = str(form.get("login") or "").strip()
        client = request.client.host if request.client else "?"
        refusal = sign_in_refusal(request, form, client)
        if refusal is None:
            try:
                user = await api.sign_in(login, str(form.get("password") or ""))
            except ApiError as exc:
                failed_sign_ins.failed(client)
                refusal = (TOO_MANY_SIGN_INS, 429) if exc.status == 429 else (
                    "Wrong user name, e-mail or password.", 401)
        if refusal is not None:
            return sign_in_page(request, next_path=next_path, login=login, error=refusal[0],
                                status=refusal[1])
        session = store.create(token=user["token"], user_id=user["user_id"], name=user["name"],
                               organisation=user["organisation"])
        response = back(next_path)
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="lax",
                            secure=settings.secure_cookies, path="/")
        response.delete_cookie(SIGN_IN_COOKIE, path="/sign-in")
        return response

    @app.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        session = current(request)
        await form_of(request, session)
        store.end(session.id)
        response = back("/sign-in?signed_out=1")
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/")
    async def home(request: Request) -> Response:
        current(request)
        return back("/campaigns")

    # --- campaigns --------------------------------------------------------------------------

    @app.get("/campaigns", response_class=HTMLResponse)
    async def campaigns(request: Request, state: str | None = None) -> Response:
        session = current(request)
        if state is not None and state not in STATES:
            state = None
        rows = await with_shown_states(session, (await call(session, "GET", "/campaigns"))
                                       ["campaigns"])
        counts = {s: sum(1 for c in rows if c["state"] == s) for s in STATES}
        by_state = campaigns_by_state(rows, state)
        return page(request, "campaigns.html", session, state=state, counts=counts,
                    by_state=by_state, total=len(rows), states=STATES)

    async def form_choices(session: Session) -> dict[str, Any]:
        senders, templates_, lists = await asyncio.gather(
            call(session, "GET", "/senders"), call(session, "GET", "/templates"),
            call(session, "GET", "/lists"))
        return {"senders": senders["senders"], "templates": templates_["templates"],
                "lists": lists["lists"]}

    @app.get("/campaigns/new", response_class=HTMLResponse)
    async def new_campaign(request: Request) -> Response:
        session = current(request)
        return page(request, "campaign_new.html", session, form={}, errors=[],
                    **await form_choices(session))

    @app.post("/campaigns/new")
    async def create_campaign(request: Request) -> Response:
        session = current(request)
        form = await form_of(request, session)
        body, list_ids, errors = campaign_form(form)
        upload = form.get("csv")
        csv_bytes = await upload.read() if isinstance(upload, UploadFile) else b""
        if errors:
            return page(request, "campaign_new.html", session, status=422, errors=errors,
                        form=dict(form), **await form_choices(session))
        try:
            campaign = await call(session, "POST", "/campaigns", json=body)
        except ApiError as exc:
            return page(request, "campaign_new.html", session, status=422,
                        errors=[exc.message], form=dict(form), **await form_choices(session))
        cid = campaign["id"]
        if list_ids:
            await call(session, "POST", f"/campaigns/{cid}/lists", json={"list_ids": list_ids})
        if csv_bytes.strip():
            await upload_csv(session, cid, csv_bytes)
        else:
            session.flash("ok", f"Campaign “{campaign['name']}” created.")
        return back(f"/campaigns/{cid}")

    async def upload_csv(session: Session, cid: str, data: bytes) -> None:
        try:
            added = await call(session, "POST", f"/campaigns/{cid}/recipients.csv",
                               content=data, headers={"Content-Type": "text/csv"})
        except ApiError as exc:
            rows = exc.row_errors
            session.flash("error", "The CSV was not added: " + (
                ("1 row has" if len(rows) == 1 else f"{len(rows)} rows have")
                + " errors, listed below. Nothing was added."
                if rows else exc.message))
            session.csv_errors = rows
            return
        if added.get("rejected"):
            # The good rows were added; the refused ones are listed by line.
            session.flash("error", csv_partly_added(added["rejected"], added["added"]))
            session.csv_errors = added.get("errors", [])
            return
        session.flash("ok", ("1 recipient" if added["added"] == 1 else
                             f"{added['added']} recipients") + " added from the CSV.")

    @app.post("/campaigns/{cid}/recipients")
    async def add_csv(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        form = await form_of(request, session)
        upload = form.get("csv")
        data = await upload.read() if isinstance(upload, UploadFile) else b""
        if not data.strip():
            session.flash("error", "Choose a CSV file with a header row.")
        else:
            await upload_csv(session, str(cid), data)
        return back(f"/campaigns/{cid}")

    async def with_shown_states(session: Session, rows: list[dict[str, Any]]) \
            -> list[dict[str, Any]]:
        """The campaigns with `shown_state`s: the tracker's progress is asked for the most
        recent IN_FLIGHT_RECONCILED campaigns in flight (the others, and any the tracker does
        not answer for, keep the scheduler's state)."""
        flying = [c for c in rows if c["state"] in IN_FLIGHT][:IN_FLIGHT_RECONCILED]
        answers = await asyncio.gather(*(progress_of(session, str(c["id"])) for c in flying),
                                       return_exceptions=True)
        states: dict[Any, str] = {}
        for c, answer in zip(flying, answers, strict=True):
            if isinstance(answer, (ApiError, httpx.HTTPError)):
                continue  # the tracker restarting: the list still shows
            if isinstance(answer, BaseException):
                raise answer
            states[c["id"]] = shown_state(c["state"], answer)
        return [{**c, "state": states.get(c["id"], c["state"])} for c in rows]

    async def progress_of(session: Session, cid: str) -> dict[str, Any] | None:
        try:
            return dict(await api.call(session.token, "tracker", "GET",
                                       f"/campaigns/{cid}/progress"))
        except ApiError as exc:
            if exc.status == 404:
                return None  # not started yet: the tracker learns a campaign when it starts
            raise

    @app.get("/campaigns/{cid}", response_class=HTMLResponse)
    async def campaign_page(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        campaign = await call(session, "GET", f"/campaigns/{cid}")
        progress, lists = await asyncio.gather(
            progress_of(session, str(cid)), call(session, "GET", f"/campaigns/{cid}/lists"))
        csv_errors, session.csv_errors = session.csv_errors, []
        campaign = {**campaign, "state": shown_state(campaign["state"], progress)}
        return page(request, "campaign.html", session, c=campaign, p=progress,
                    lists=lists.get("lists", []) if isinstance(lists, dict) else lists,
                    csv_errors=csv_errors)

    async def act(session: Session, cid: uuid.UUID, path: str, done: str,
                  **kwargs: Any) -> Any:
        try:
            result = await call(session, "POST", f"/campaigns/{cid}/{path}", **kwargs)
        except ApiError as exc:
            if exc.status == 404:
                raise NotFoundPage() from exc
            session.flash("error", exc.message)
            return None
        session.flash("ok", done)
        return result

    @app.post("/campaigns/{cid}/send-now")
    async def send_now(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        await form_of(request, session)
        await act(session, cid, "send-now", "Sending out now.")
        return back(f"/campaigns/{cid}")

    @app.post("/campaigns/{cid}/schedule")
    async def schedule(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        form = await form_of(request, session)
        tz_name = str(form.get("tz") or "UTC")
        try:
            zone = ZoneInfo(tz_name)
            at = datetime.fromisoformat(str(form.get("at") or ""))
        except (ZoneInfoNotFoundError, ValueError):
            session.flash("error", "Give a date and time to send on.")
            return back(f"/campaigns/{cid}")
        when = (at.replace(tzinfo=zone) if at.tzinfo is None else at).astimezone(UTC)
        await act(session, cid, "schedule",
                  f"Scheduled for {when.astimezone(zone):%Y-%m-%d %H:%M} ({tz_name}).",
                  json={"at": when.isoformat()})
        return back(f"/campaigns/{cid}")

    @app.post("/campaigns/{cid}/cancel")
    async def cancel(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        await form_of(request, session)
        await act(session, cid, "cancel", "Schedule cancelled: nothing was sent. "
                                          "Send out now or schedule again.")
        return back(f"/campaigns/{cid}")

    @app.get("/campaigns/{cid}/abort", response_class=HTMLResponse)
    async def confirm_abort(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        campaign = await call(session, "GET", f"/campaigns/{cid}")
        return page(request, "abort.html", session, c=campaign)

    @app.post("/campaigns/{cid}/abort")
    async def abort(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        await form_of(request, session)
        try:
            result = await call(session, "POST", f"/campaigns/{cid}/abort")
        except ApiError as exc:
            if exc.status == 404:
                raise NotFoundPage() from exc
            session.flash("error", exc.message)
            return back(f"/campaigns/{cid}")
        pending = (result.get("abort") or {}).get("pending")
        session.flash("ok", "Aborted. " + (
            f"{pending} messages were still pending and were not sent."
            if pending is not None else
            "Not every dispatcher answered in time; the counters show what was sent."))
        return back(f"/campaigns/{cid}")

    async def poll_progress(
        session: Session, cid: uuid.UUID, p2p: int, state: str, last: Any
    ) -> tuple[Any, str]:
        """The progress now, with a peer-to-peer campaign's processed count and state; the last
        one while the tracker does not answer. ApiError or SignedOut: the stream ends."""
        try:
            progress = await progress_of(session, str(cid))
            if p2p and progress is not None:
                c = await api.call(session.token, "scheduler", "GET", f"/campaigns/{cid}")
                progress["processed"] = c["processed"]
                state = c["state"]
        except (ApiError, SignedOut):
            raise
        except Exception:  # the tracker restarting: keep the page, try again
            progress = last
        return progress, state

    async def progress_events(
        request: Request, session: Session, cid: uuid.UUID, p2p: int, state: str
    ) -> AsyncIterator[bytes]:
        """The tracker's progress as Server-Sent Events, each time it changes."""
        last: Any = None
        quiet = 0.0
        # A stream ends after a while and the browser reconnects (EventSource does, and
        # gets the current state first): so a stopping console is not held by open pages.
        ends = asyncio.get_running_loop().time() + settings.stream_max_seconds
        yield b"retry: 1000\n\n"
        while (not await request.is_disconnected()
               and asyncio.get_running_loop().time() < ends):
            try:
                progress, state = await poll_progress(session, cid, p2p, state, last)
            except (ApiError, SignedOut):
                break
            if progress is not None and progress != last:
                last = progress
                quiet = 0.0
                shown = {**progress, "state": progress_state(state, progress)}
                yield f"data: {json.dumps(shown)}\n\n".encode()
                # Until the tracker is done: its counters may still move after the
                # scheduler's state is final (an ended peer-to-peer campaign).
                if progress.get("state") in DONE_STATES:
                    yield b"event: done\ndata: {}\n\n"
                    return
            elif quiet >= 15:
                quiet = 0.0
                yield b": keep-alive\n\n"
            await asyncio.sleep(settings.progress_poll_seconds)
            quiet += settings.progress_poll_seconds

    @app.get("/campaigns/{cid}/events")
    async def events(request: Request, cid: uuid.UUID, p2p: int = 0) -> Response:
        """Server-Sent Events: the tracker's progress, pushed when it changes."""
        session = current(request)
        # 404 for another organisation's; the state shown with the progress (a peer-to-peer
        # campaign's is read again on each poll, with its processed count).
        campaign_state = (await call(session, "GET", f"/campaigns/{cid}"))["state"]
        stream = progress_events(request, session, cid, p2p, campaign_state)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/campaigns/{cid}/report.csv")
    async def report(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        try:
            headers, chunks = await api.stream(session.token, f"/campaigns/{cid}/report.csv")
        except ApiError as exc:
            if exc.status == 404:
                raise NotFoundPage() from exc
            raise HTTPException(exc.status, exc.message) from exc
        headers.setdefault("content-disposition",
                           f'attachment; filename="campaign-{cid}-report.csv"')
        return StreamingResponse(chunks, headers=headers,
                                 media_type=headers.get("content-type", "text/csv"))

    # --- voters -----------------------------------------------------------------------------

    @app.get("/voters", response_class=HTMLResponse)
    async def voters(request: Request, q: str = "", after: int = 0) -> Response:
        session = current(request)
        params: dict[str, Any] = {"after": max(after, 0), "limit": settings.page_size}
        if q.strip():
            params["q"] = q.strip()[:200]
        result = await call(session, "GET", "/voters", params=params)
        next_url = None
        if result.get("next_after"):
            next_url = "/voters?" + urlencode({"q": q, "after": result["next_after"]})
        return page(request, "voters.html", session, q=q, voters=result["voters"],
                    next_url=next_url, after=after)

    @app.get("/voters/{voter_id}", response_class=HTMLResponse)
    async def voter_page(request: Request, voter_id: int) -> Response:
        session = current(request)
        voter = await call(session, "GET", f"/voters/{voter_id}")
        history, choices = await asyncio.gather(
            call(session, "GET", f"/voters/{voter_id}/history", service="tracker"),
            form_choices(session))
        statuses: dict[str, list[dict[str, Any]]] = {}
        for h in history["history"]:
            statuses.setdefault(h["campaign_id"], []).append(h)
        return page(request, "voter.html", session, v=voter, statuses=statuses, **choices)

    @app.post("/voters/{voter_id}/send")
    async def send_to_voter(request: Request, voter_id: int) -> Response:
        session = current(request)
        form = await form_of(request, session)
        channels = [c for c in form.getlist("channels") if c in CHANNELS]
        if not channels or not form.get("sender_id") or not form.get("template_id"):
            session.flash("error", "Choose email and/or SMS, a sender and a template.")
            return back(f"/voters/{voter_id}#send")
        try:
            campaign = await call(session, "POST", f"/voters/{voter_id}/send", json={
                "channels": channels, "sender_id": form.get("sender_id"),
                "template_id": form.get("template_id")})
        except ApiError as exc:
            if exc.status == 404:
                raise NotFoundPage() from exc
            session.flash("error", exc.message)
            return back(f"/voters/{voter_id}#send")
        names = " and ".join("an email" if c == "email" else "an SMS" for c in channels)
        session.flash("ok", f"Sending {names}: it appears under Campaigns below "
                            f"(campaign “{campaign['name']}”).")
        return back(f"/voters/{voter_id}")

    # --- peer to peer -----------------------------------------------------------------------

    async def p2p_campaigns(session: Session, states: tuple[str, ...]) -> list[dict[str, Any]]:
        rows = (await call(session, "GET", "/campaigns"))["campaigns"]
        rows = await with_shown_states(session, [c for c in rows if c["kind"] == "p2p"])
        return [c for c in rows if c["state"] in states]

    @app.get("/p2p", response_class=HTMLResponse)
    async def p2p_current(request: Request) -> Response:
        session = current(request)
        return page(request, "p2p_list.html", session, completed=False,
                    campaigns=await p2p_campaigns(session, OPEN_STATES))

    @app.get("/p2p/completed", response_class=HTMLResponse)
    async def p2p_completed(request: Request) -> Response:
        session = current(request)
        return page(request, "p2p_list.html", session, completed=True,
                    campaigns=await p2p_campaigns(session, DONE_STATES))

    async def p2p_campaign(session: Session, cid: uuid.UUID) -> dict[str, Any]:
        campaign: dict[str, Any] = await call(session, "GET", f"/campaigns/{cid}")
        if campaign["kind"] != "p2p":
            raise NotFoundPage()
        return campaign

    @app.post("/p2p/{cid}/start")
    async def p2p_start(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        await form_of(request, session)
        try:
            await call(session, "POST", f"/campaigns/{cid}/p2p/start")
        except ApiError as exc:
            if exc.status == 404:
                raise NotFoundPage() from exc
            active = exc.detail.get("detail", {}) if isinstance(exc.detail, dict) else {}
            active_id = active.get("active_campaign") if isinstance(active, dict) else None
            if exc.status == 409 and active_id == str(cid):
                return back(f"/p2p/{cid}/send")  # already sending this one
            if exc.status == 409 and active_id:
                session.flash("error", "You can send only one campaign at a time, and you are "
                              "already sending another one. End it (Campaign Details → End "
                              "Campaign) before you start this one.")
            else:
                session.flash("error", exc.message)
            return back("/p2p")
        return back(f"/p2p/{cid}/send")

    @app.get("/p2p/{cid}/send", response_class=HTMLResponse)
    async def p2p_send_page(request: Request, cid: uuid.UUID, after: int = 0) -> Response:
        session = current(request)
        campaign = await p2p_campaign(session, cid)
        result = await call(session, "GET", f"/campaigns/{cid}/p2p/recipients",
                            params={"after": max(after, 0), "limit": settings.page_size})
        recipients = result["recipients"]
        first_unsent = next((r["id"] for r in recipients if not r["sent"]), None)
        next_url = f"/p2p/{cid}/send?after={result['next_after']}" \
            if result.get("next_after") else None
        return page(request, "p2p_send.html", session, c=campaign, recipients=recipients,
                    first_unsent=first_unsent, next_url=next_url, after=after)

    @app.post("/p2p/{cid}/recipients/{rid}/send")
    async def p2p_press(request: Request, cid: uuid.UUID, rid: int) -> Response:
        session = current(request)
        form = await form_of(request, session)
        try:
            result = await call(session, "POST", f"/campaigns/{cid}/recipients/{rid}/send")
        except ApiError as exc:
            if exc.status == 404:
                raise NotFoundPage() from exc
            message = exc.message
            if wants_json(request):
                return Response(json.dumps({"message": message}), status_code=exc.status,
                                media_type="application/json")
            session.flash("error", message)
            return back(f"/p2p/{cid}/send?after={form.get('after') or 0}#r{rid}")
        status = result["status"]
        tz = user_tz(request)
        queued = f"Queued until {local_iso(result.get('goes_at'), tz)} ({tz})"
        text = {"sent": "Sent", "already sent": "Already sent"}.get(status, queued)
        if wants_json(request):
            return Response(json.dumps({"status": status, "text": text}),
                            media_type="application/json")
        return back(f"/p2p/{cid}/send?after={form.get('after') or 0}")

    @app.get("/p2p/{cid}", response_class=HTMLResponse)
    async def p2p_details(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        campaign = await p2p_campaign(session, cid)
        progress = await progress_of(session, str(cid))
        campaign = {**campaign, "state": shown_state(campaign["state"], progress)}
        return page(request, "p2p_details.html", session, c=campaign, p=progress,
                    end_error=None)

    @app.post("/p2p/{cid}/end")
    async def p2p_end(request: Request, cid: uuid.UUID) -> Response:
        session = current(request)
        form = await form_of(request, session)
        campaign = await p2p_campaign(session, cid)
        typed = str(form.get("confirmation") or "")
        if typed != "END":
            progress = await progress_of(session, str(cid))
            campaign = {**campaign, "state": shown_state(campaign["state"], progress)}
            return page(request, "p2p_details.html", session, c=campaign, p=progress,
                        status=422, end_error="Type END, in capital letters, to end the "
                                              "campaign.", end_open=True)
        try:
            await call(session, "POST", f"/campaigns/{cid}/end", json={"confirmation": typed})
        except ApiError as exc:
            session.flash("error", exc.message)
            return back(f"/p2p/{cid}")
        session.flash("ok", f"Campaign “{campaign['name']}” ended: it is under Completed "
                            "Campaigns.")
        return back("/p2p/completed")

    # --- templates and senders --------------------------------------------------------------

    @app.get("/templates", response_class=HTMLResponse)
    async def templates_page(request: Request) -> Response:
        session = current(request)
        senders, templates_ = await asyncio.gather(
            call(session, "GET", "/senders"), call(session, "GET", "/templates"))
        return page(request, "templates.html", session, senders=senders["senders"],
                    templates=templates_["templates"])

    async def sample_recipient(session: Session) -> dict[str, Any]:
        found = await call(session, "GET", "/voters", params={"limit": 1})
        if found["voters"]:
            v = found["voters"][0]
            return {**(v.get("attributes") or {}),
                    **{k: v.get(k) for k in ("first_name", "last_name", "email", "phone")}}
        return dict(SAMPLE_RECIPIENT)

    def template_fields(form: FormData) -> dict[str, Any]:
        def text(name: str) -> str | None:
            value = str(form.get(name) or "")
            return value if value.strip() else None

        return {"name": (text("name") or "").strip(), "email_subject": text("email_subject"),
                "email_body": text("email_body"), "sms_body": text("sms_body")}

    async def template_form(request: Request, session: Session, *, template_id: str | None,
                            fields: dict[str, Any], checked: bool = False,
                            error: str | None = None, status: int = 200) -> Response:
        sample = await sample_recipient(session)
        previews = {k: preview(fields.get(k), sample)
                    for k in ("email_subject", "email_body", "sms_body")} if checked else {}
        return page(request, "template_form.html", session, template_id=template_id,
                    t=fields, previews=previews, sample=sample, error=error, status=status,
                    checked=checked)

    @app.get("/templates/new", response_class=HTMLResponse)
    async def new_template(request: Request) -> Response:
        session = current(request)
        return await template_form(request, session, template_id=None, fields={})

    @app.get("/templates/{tid}/edit", response_class=HTMLResponse)
    async def edit_template(request: Request, tid: uuid.UUID) -> Response:
        session = current(request)
        rows = (await call(session, "GET", "/templates"))["templates"]
        found = next((t for t in rows if t["id"] == str(tid)), None)
        if found is None:
            raise NotFoundPage()
        return await template_form(request, session, template_id=str(tid), fields=found)

    async def save_template(request: Request, tid: str | None) -> Response:
        session = current(request)
        form = await form_of(request, session)
        fields = template_fields(form)
        if form.get("action") != "save":
            return await template_form(request, session, template_id=tid, fields=fields,
                                       checked=True)
        try:
            if tid is None:
                saved = await call(session, "POST", "/templates", json=fields)
            else:
                saved = await call(session, "PUT", f"/templates/{tid}", json=fields)
        except ApiError as exc:
            if exc.status == 404:
                raise NotFoundPage() from exc
            return await template_form(request, session, template_id=tid, fields=fields,
                                       checked=True, error=exc.message, status=422)
        session.flash("ok", f"Template “{saved['name']}” saved (version {saved['version']}).")
        return back("/templates")

    @app.post("/templates/new")
    async def create_template(request: Request) -> Response:
        return await save_template(request, None)

    @app.post("/templates/{tid}/edit")
    async def update_template(request: Request, tid: uuid.UUID) -> Response:
        return await save_template(request, str(tid))

    @app.get("/senders/new", response_class=HTMLResponse)
    async def new_sender(request: Request) -> Response:
        session = current(request)
        return page(request, "sender_form.html", session, s={}, error=None)

    @app.post("/senders/new")
    async def create_sender(request: Request) -> Response:
        session = current(request)
        form = await form_of(request, session)
        fields = {k: (str(form.get(k) or "").strip() or None)
                  for k in ("name", "email", "sms_sender_id")}
        try:
            saved = await call(session, "POST", "/senders", json=fields)
        except ApiError as exc:
            return page(request, "sender_form.html", session, s=fields, error=exc.message,
                        status=422)
        session.flash("ok", f"Sender “{saved['name']}” created.")
        return back("/templates")

    app.state.sessions = store
    return app


def campaigns_by_state(
    rows: list[dict[str, Any]], state: str | None
) -> dict[str, list[dict[str, Any]]]:
    """The campaigns listed under each state: the one `state`'s, or (None) the most recent of
    every state."""
    shown = [c for c in rows if state is None or c["state"] == state]
    # All states on one page: the most recent of each; a state's tab lists all of them.
    per_state = None if state else ALL_VIEW_PER_STATE
    return {s: [c for c in shown if c["state"] == s][:per_state] for s in STATES}


def campaign_form(form: FormData) -> tuple[dict[str, Any], list[str], list[str]]:
    """The new-campaign form as the scheduler's request body, the lists it targets, and what
    is missing from it (sentences for the page)."""
    channels = [c for c in form.getlist("channels") if c in CHANNELS]
    body = {"name": str(form.get("name") or "").strip(),
            "kind": "p2p" if form.get("kind") == "p2p" else "mass",
            "channels": channels, "sender_id": form.get("sender_id") or None,
            "template_id": form.get("template_id") or None}
    list_ids = [str(x) for x in form.getlist("list_ids") if x]
    return body, list_ids, _missing_from(body)


def _missing_from(body: dict[str, Any]) -> list[str]:
    """What the new-campaign form lacks, as sentences for the page."""
    errors: list[str] = []
    if not body["name"]:
        errors.append("Give the campaign a name.")
    if not body["channels"]:
        errors.append("Choose at least one channel (email or SMS).")
    if not body["sender_id"]:
        errors.append("Choose a sender.")
    if not body["template_id"]:
        errors.append("Choose a template.")
    return errors
