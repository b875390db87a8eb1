"""Rule: a route parses the request, calls one service function (or read), and answers;
≤ 25 lines.

The tracker's HTTP API, a module per area, each with a module-level `APIRouter`; the routes
take what they need through `Depends` (dependencies.py). Besides the routes: what the OpenAPI
document needs to know of them (signed paths, other errors).
"""

from __future__ import annotations

from fastapi import APIRouter

from services.tracker.entrypoints.http import progress, receipts, report, twilio_callbacks, voters

ROUTERS: tuple[APIRouter, ...] = (
    progress.router, voters.router, receipts.router, twilio_callbacks.router, report.router,
)

# What the OpenAPI document says besides each route's own answer (shared/openapi.py).
SIGNED_PATHS = frozenset({"/receipts", "/providers/twilio/status"})
OTHER_ERRORS: dict[tuple[str, str], dict[int, str]] = {
    ("POST", "/receipts"): {503: "Receipts not configured (SENDOUT_RECEIPTS_SECRET)"},
    ("POST", "/providers/twilio/status"): {
        400: "Body is not UTF-8", 503: "Twilio not configured (SENDOUT_TWILIO_AUTH_TOKEN)"},
}
