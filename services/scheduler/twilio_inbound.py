"""Twilio's inbound-message webhook: a recipient's STOP reply opts their number out.

Twilio posts the reply form-encoded (`From`, `To`, `Body`, and `OptOutType` = STOP when its
Advanced Opt-Out recognised an opt-out keyword), signed with `X-Twilio-Signature`
(shared/twilio.py) over the URL it called: configure the number's (or Messaging Service's)
inbound URL as `{public base}/organisations/{organisation id}/inbound-sms/twilio`. The answer
is empty TwiML: Sendout sends no reply of its own (Twilio's opt-out confirmation, if enabled,
is Twilio's).
"""

from __future__ import annotations

import uuid

import asyncpg
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import SecretStr

from services.scheduler import domain, p2p
from shared import twilio

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def http_router(
    pool: asyncpg.Pool, auth_token: SecretStr | None, public_base_url: str | None, region: str
) -> APIRouter:
    router = APIRouter(tags=["opt-outs"])

    @router.post("/organisations/{organisation_id}/inbound-sms/twilio")
    async def twilio_inbound(organisation_id: uuid.UUID, request: Request) -> Response:
        """A reply to one of the organisation's texts, as Twilio posts it. 401 without a valid
        `X-Twilio-Signature`."""
        pairs = await twilio.signed_form(request, auth_token, public_base_url, "inbound")
        params = dict(pairs)
        sender, text = params.get("From", ""), params.get("Body", "")
        if not sender:
            raise HTTPException(422, "From is required")
        if params.get("OptOutType") == "STOP" or domain.is_stop_message(text):
            await p2p.opt_out(pool, organisation_id, sender, source="inbound_sms",
                              keyword=text.strip().upper()[:50] or "STOP", region=region)
        return Response(EMPTY_TWIML, media_type="application/xml")

    return router
