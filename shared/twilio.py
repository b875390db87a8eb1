"""Twilio's request signature (`X-Twilio-Signature`), shared by the status-callback route,
the fake Twilio and tests.

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
from urllib.parse import urlsplit, urlunsplit

SIGNATURE_HEADER = "X-Twilio-Signature"


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
