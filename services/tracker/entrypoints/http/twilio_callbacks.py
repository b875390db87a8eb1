"""Twilio's message status callbacks: signed form posts, turned into Sendout's delivery
receipts (services/tracker/twilio_callbacks.py says how) and published as every receipt is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import ValidationError

from services.tracker import receipts_service
from services.tracker.entrypoints.http.dependencies import Running, Settings
from services.tracker.twilio_callbacks import PATH, receipt_of
from shared import twilio

router = APIRouter(tags=["receipts"])


@router.post(PATH)
async def twilio_status(request: Request, tracker: Running, config: Settings) -> dict[str, Any]:
    """Twilio's StatusCallback (`SENDOUT_TWILIO_STATUS_CALLBACK` on the dispatcher points
    here). 401 without a valid `X-Twilio-Signature`."""
    pairs = await twilio.signed_form(
        request, config.twilio_auth_token, config.twilio_public_base_url, "callbacks")
    try:
        receipt = receipt_of(dict(pairs), datetime.now(UTC))
    except (ValueError, ValidationError) as exc:
        raise HTTPException(422, str(exc)) from exc
    if receipt is None:
        return {"accepted": 0}
    return {"accepted": await receipts_service.accept(
        tracker.pool, tracker.publish_receipts, [receipt])}
