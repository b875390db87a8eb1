"""Receipts: the providers' status-callback webhook. It only publishes to
`sendout.receipts.v1`; the Kafka subscriber (entrypoints/kafka.py) projects them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import ValidationError

from services.tracker import receipts_domain, receipts_service
from services.tracker.entrypoints.http.dependencies import Running, Settings
from services.tracker.receipts_domain import RECEIPT_BODY
from shared import webhooks
from shared.http_input import validation_detail

router = APIRouter(tags=["receipts"])


@router.post("/receipts", status_code=202)
async def receipts(request: Request, tracker: Running, config: Settings) -> dict[str, Any]:
    """Providers' delivery receipts: one `{provider_message_id, status: delivered |
    not_delivered, reason?, at}` or `{"receipts": [...]}` (at most 1000), signed (see
    `receipts_domain`). 202 once they are on Kafka; the progress counts them shortly."""
    secret = config.receipts_secret
    if secret is None:
        raise HTTPException(503, "receipts webhook not configured (SENDOUT_RECEIPTS_SECRET)")
    body, claimed = await webhooks.signed_body(
        request, secret.get_secret_value().encode(),
        max_skew_seconds=config.receipts_max_skew_seconds)
    try:
        parsed = RECEIPT_BODY.validate_json(body)
    except ValidationError as exc:
        raise HTTPException(422, validation_detail(exc.errors())) from exc
    async with tracker.receipt_nonces.claimed(claimed.nonce):
        accepted = await receipts_service.accept(
            tracker.pool, tracker.publish_receipts, receipts_domain.receipts_of(parsed)
        )
    return {"accepted": accepted}
