"""Rule: a route parses the request, calls one use case (or view), and answers; ≤ 25 lines.

The scheduler's HTTP API, a module per area, each with a module-level `APIRouter`; the routes
take what they need through `Depends` (dependencies.py). Besides the routes: what the input
guard and the OpenAPI document need to know of them (body limits, signed paths, errors).
"""

from __future__ import annotations

from fastapi import APIRouter

from services.scheduler.entrypoints.http import (
    campaigns,
    identity,
    opt_outs,
    p2p,
    senders,
    templates,
    voters,
)
from shared.http_input import BodyLimit

ROUTERS: tuple[APIRouter, ...] = (
    senders.router, templates.router, campaigns.router, identity.admin, p2p.router,
    opt_outs.router, voters.router, identity.auth,
)

MAX_CSV_BYTES = 200 * 1024 * 1024
_UUID = "[^/]+"
# Request body limits (413 beyond them, before the body is read); every other route: 1 MiB.
# The routes with large limits check the caller's token before reading any of the body.
BODY_LIMITS = (
    BodyLimit("POST", f"/campaigns/{_UUID}/recipients.csv", MAX_CSV_BYTES, True),
    BodyLimit("POST", "/voters.csv", MAX_CSV_BYTES, True),
    BodyLimit("POST", f"/lists/{_UUID}/voters.csv", MAX_CSV_BYTES, True),
    # Up to 100,000 recipients as JSON.
    BodyLimit("POST", f"/campaigns/{_UUID}/recipients", 64 * 1024 * 1024, True),
    BodyLimit("POST", f"/organisations/{_UUID}/inbound-sms", 16 * 1024),
)

# What the OpenAPI document says besides each route's own answer (shared/openapi.py).
SIGNED_PATHS = frozenset({"/organisations/{organisation_id}/inbound-sms",
                          "/organisations/{organisation_id}/inbound-sms/twilio"})
OTHER_ERRORS: dict[tuple[str, str], dict[int, str]] = {
    ("POST", "/auth/sign-in"): {401: "Wrong user name, e-mail or password",
                                429: "Too many failed sign-ins; try again later"},
    ("PUT", "/auth/password"): {403: "The current password is wrong"},
    ("POST", "/organisations/{organisation_id}/inbound-sms"): {
        503: "Inbound SMS not configured (SENDOUT_INBOUND_SMS_SECRET)"},
    ("POST", "/organisations/{organisation_id}/inbound-sms/twilio"): {
        400: "Body is not UTF-8", 503: "Twilio not configured (SENDOUT_TWILIO_AUTH_TOKEN)"},
}


def may_conflict(method: str, path: str) -> bool:
    """Whether an operation answers 409: it changes a campaign, which may be in the wrong
    state for it, or deletes a list that a campaign yet to start targets."""
    return (method != "GET" and path.startswith("/campaigns/{campaign_id}")) or (
        method, path) == ("DELETE", "/lists/{list_id}")
