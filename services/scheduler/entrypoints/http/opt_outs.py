"""Opt-outs: by the API, or a recipient's STOP reply through the SMS provider's signed
callback (ours, or Twilio's). An opted-out address is never messaged again.

Twilio posts the reply form-encoded (`From`, `To`, `Body`, and `OptOutType` = STOP when its
Advanced Opt-Out recognised an opt-out keyword), signed with `X-Twilio-Signature`
(shared/twilio.py) over the URL it called: configure the number's (or Messaging Service's)
inbound URL as `{public base}/organisations/{organisation id}/inbound-sms/twilio`. The answer
is empty TwiML: Sendout sends no reply of its own (Twilio's opt-out confirmation, if enabled,
is Twilio's).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import ValidationError

from services.scheduler.bootstrap import INBOUND_SMS_MAX_SKEW_SECONDS
from services.scheduler.entrypoints.http.dependencies import Caller, OptOutsUow, Region, Running
from services.scheduler.opt_outs import use_cases
from services.scheduler.opt_outs.model import InboundSms, OptOut, is_stop_message
from shared import twilio, webhooks
from shared.http_input import validation_detail

router = APIRouter(tags=["opt-outs"])
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@router.post("/opt-outs", status_code=201)
async def add_opt_out(
    cmd: OptOut, principal: Caller, uow: OptOutsUow, region: Region
) -> dict[str, Any]:
    address = await use_cases.opt_out(uow, principal.organisation_id, cmd.address,
                                      source="api", keyword=None, region=region)
    return {"address": address, "opted_out": True}


async def _signed_inbound_sms(
    request: Request, scheduler: Running
) -> tuple[InboundSms, webhooks.Claimed]:
    """The callback's message, its signature checked (503 when no secret is configured)."""
    secret = scheduler.settings.inbound_sms_secret
    if secret is None:
        raise HTTPException(503, "inbound SMS not configured (SENDOUT_INBOUND_SMS_SECRET)")
    body, claimed = await webhooks.signed_body(
        request, secret.get_secret_value().encode(),
        max_skew_seconds=INBOUND_SMS_MAX_SKEW_SECONDS)
    try:
        return InboundSms.model_validate_json(body), claimed
    except ValidationError as exc:
        raise HTTPException(422, validation_detail(exc.errors())) from exc


@router.post("/organisations/{organisation_id}/inbound-sms")
async def inbound_sms(
    organisation_id: uuid.UUID, request: Request, scheduler: Running
) -> dict[str, Any]:
    """The SMS provider's inbound-message callback `{from, to?, body}`, signed like the
    receipts webhook (shared/webhooks.py: method, this path, timestamp and nonce; a nonce
    is accepted once): STOP and its synonyms opt the sender out. 404 for an organisation
    that does not exist."""
    msg, claimed = await _signed_inbound_sms(request, scheduler)
    await use_cases.ensure_organisation_exists(scheduler.uow(), organisation_id)
    async with scheduler.inbound_nonces.claimed(claimed.nonce):
        if not is_stop_message(msg.body):
            return {"opted_out": False}
        address = await use_cases.opt_out(
            scheduler.uow(), organisation_id, msg.sender, source="inbound_sms",
            keyword=msg.body.strip().upper(), region=scheduler.settings.default_phone_region)
    return {"opted_out": True, "address": address}


@router.post("/organisations/{organisation_id}/inbound-sms/twilio")
async def twilio_inbound(
    organisation_id: uuid.UUID, request: Request, scheduler: Running
) -> Response:
    """A reply to one of the organisation's texts, as Twilio posts it. 401 without a valid
    `X-Twilio-Signature`."""
    config = scheduler.settings
    pairs = await twilio.signed_form(request, config.twilio_auth_token,
                                     config.twilio_public_base_url, "inbound")
    params = dict(pairs)
    sender, text = params.get("From", ""), params.get("Body", "")
    if not sender:
        raise HTTPException(422, "From is required")
    if params.get("OptOutType") == "STOP" or is_stop_message(text):
        await use_cases.opt_out(scheduler.uow(), organisation_id, sender, source="inbound_sms",
                                keyword=text.strip().upper()[:50] or "STOP",
                                region=config.default_phone_region)
    return Response(EMPTY_TWIML, media_type="application/xml")
