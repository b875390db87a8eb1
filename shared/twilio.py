"""Twilio's request signature (`X-Twilio-Signature`), shared by the two webhook routes
(the tracker's status callbacks, the scheduler's inbound messages), the fake Twilio and tests.

Twilio signs each webhook request with the account's auth token: HMAC-SHA1 over the full URL
it called (scheme, host, path and query string) followed by every POST parameter, sorted by
name, as name then value with nothing between; base64. A request arriving through a proxy that
changed the URL cannot be checked against the URL the server sees: the receiving side takes
its public base URL from its settings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from fastapi import HTTPException, Request
from pydantic import SecretStr

SIGNATURE_HEADER = "X-Twilio-Signature"
MAX_BODY = 64 * 1024


class SignatureRejected(ValueError):
    """The request is not signed with the account's auth token for this URL (→ 401)."""


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    data = url + "".join(name + value for name, value in sorted(set(params)))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def _port_variants(url: str) -> set[str]:
    """The URL as given, without its port and with the scheme's default port: Twilio's own
    validators accept a signature over any of them (what Twilio signed depends on how the
    callback URL was written)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc_base = (f"{parts.username}{':' + parts.password if parts.password else ''}@"
                   if parts.username else "") + host
    default = {"https": 443, "http": 80}.get(parts.scheme)
    variants = {url, urlunsplit(parts._replace(netloc=netloc_base))}
    if default is not None and parts.port is None:
        variants.add(urlunsplit(parts._replace(netloc=f"{netloc_base}:{default}")))
    return variants


def valid(auth_token: str, url: str, params: Iterable[tuple[str, str]], given: str) -> bool:
    pairs = list(params)
    return any(hmac.compare_digest(signature(auth_token, variant, pairs).encode(),
                                   given.encode())
               for variant in _port_variants(url))


def verify(url: str, params: Iterable[tuple[str, str]], given: str, auth_token: str) -> None:
    """Raises SignatureRejected unless `given` is Twilio's signature of this request."""
    if not given or not valid(auth_token, url, params, given):
        raise SignatureRejected(f"{SIGNATURE_HEADER} missing or not valid for this URL")


def called_url(request: Request, public_base_url: str | None) -> str:
    """The URL Twilio called: behind a proxy, the public base URL from the settings with the
    path and query the service received."""
    if not public_base_url:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return public_base_url.rstrip("/") + request.url.path + query


async def signed_form(
    request: Request, auth_token: SecretStr | None, public_base_url: str | None, what: str
) -> list[tuple[str, str]]:
    """The form parameters of a webhook request Twilio signed, in the order posted. `what`
    names the webhook in the errors: 503 when no auth token is configured, 413 over
    MAX_BODY, 400 for a body that is not UTF-8, 401 for a missing or wrong signature."""
    if auth_token is None:
        raise HTTPException(503, f"Twilio {what} not configured (SENDOUT_TWILIO_AUTH_TOKEN)")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(413, f"Twilio {what} body too large")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"Twilio {what} body is not UTF-8") from exc
    try:
        verify(called_url(request, public_base_url), pairs,
               request.headers.get(SIGNATURE_HEADER, ""), auth_token.get_secret_value())
    except SignatureRejected as exc:
        raise HTTPException(401, str(exc)) from exc
    return pairs
