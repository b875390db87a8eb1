"""The one check of `X-Twilio-Signature` both webhook routes use (shared/twilio.py): the pure
`verify` against Twilio's documented example, and `signed_form` on a request as FastAPI hands
it over (body limit, encoding, the URL Twilio called behind a proxy)."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shared import twilio

# Twilio's documented example (its security guide and request-validator docs).
TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"),
          ("From", "+14158675309"), ("To", "+18005551212")]
DOCUMENTED = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_verify_accepts_twilios_documented_example_in_any_parameter_order() -> None:
    twilio.verify(URL, PARAMS, DOCUMENTED, TOKEN)
    twilio.verify(URL, list(reversed(PARAMS)), DOCUMENTED, TOKEN)


@pytest.mark.parametrize("given", [
    "", "RSOYDt4T1cUTdK1PDd93/VVr8B8", "rsoydt4t1cutdk1pdd93/vvr8b8=", DOCUMENTED + "=",
    "RSOYDt4T1cUTdK1PDd93/VVr8B8é", "Ünïcödé signature ✓", "\x00",
])
def test_verify_refuses_a_missing_wrong_or_non_ascii_signature(given: str) -> None:
    with pytest.raises(twilio.SignatureRejected, match="X-Twilio-Signature"):
        twilio.verify(URL, PARAMS, given, TOKEN)


def test_verify_refuses_the_documented_signature_for_another_token_url_or_parameters() -> None:
    with pytest.raises(twilio.SignatureRejected):
        twilio.verify(URL, PARAMS, DOCUMENTED, "54321")
    with pytest.raises(twilio.SignatureRejected):
        twilio.verify(URL.replace("foo=1", "foo=2"), PARAMS, DOCUMENTED, TOKEN)
    with pytest.raises(twilio.SignatureRejected):
        twilio.verify(URL, [*PARAMS, ("Body", "STOP")], DOCUMENTED, TOKEN)


def _client(public_base_url: str | None = None, token: str | None = TOKEN) -> TestClient:
    app = FastAPI()

    @app.post("/myapp.php")
    async def hook(request: Request) -> dict[str, list[list[str]]]:
        pairs = await twilio.signed_form(
            request, SecretStr(token) if token else None, public_base_url, "test hooks")
        return {"pairs": [list(pair) for pair in pairs]}

    return TestClient(app, base_url="http://internal:8080")


def _post(client: TestClient, params: list[tuple[str, str]], signature: str | bytes) \
        -> tuple[int, object]:
    response = client.post("/myapp.php?foo=1&bar=2", content=urlencode(params),
                           headers={"Content-Type": "application/x-www-form-urlencoded",
                                    twilio.SIGNATURE_HEADER: signature})
    return response.status_code, response.json()


def test_signed_form_checks_the_public_url_twilio_called_not_the_one_behind_the_proxy() -> None:
    behind_proxy = _client(public_base_url="https://mycompany.com/")
    assert _post(behind_proxy, PARAMS, DOCUMENTED) == (200, {"pairs": [list(p) for p in PARAMS]})
    # Without the public base URL the service sees http://internal:8080/..., which Twilio
    # did not sign.
    status, body = _post(_client(), PARAMS, DOCUMENTED)
    assert status == 401
    assert body == {"detail": "X-Twilio-Signature missing or not valid for this URL"}


def test_signed_form_refuses_a_non_ascii_signature_header_with_401() -> None:
    client = _client(public_base_url="https://mycompany.com")
    assert _post(client, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8é".encode())[0] == 401
    assert _post(client, PARAMS, "\u2713".encode())[0] == 401


def test_signed_form_refuses_oversize_non_utf8_and_unconfigured_with_a_message() -> None:
    client = _client(public_base_url="https://mycompany.com")
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               twilio.SIGNATURE_HEADER: DOCUMENTED}
    big = client.post("/myapp.php", content=b"a=" + b"x" * twilio.MAX_BODY, headers=headers)
    assert (big.status_code, big.json()["detail"]) == (413, "Twilio test hooks body too large")
    latin1 = client.post("/myapp.php", content=b"Body=caf\xe9", headers=headers)
    assert (latin1.status_code, latin1.json()["detail"]) == \
        (400, "Twilio test hooks body is not UTF-8")
    unconfigured = _post(_client(token=None), PARAMS, DOCUMENTED)
    assert unconfigured == (503, {"detail": "Twilio test hooks not configured "
                                            "(SENDOUT_TWILIO_AUTH_TOKEN)"})
