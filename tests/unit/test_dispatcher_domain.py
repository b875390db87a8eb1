from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from jinja2.exceptions import UndefinedError

from services.dispatcher import domain
from services.dispatcher.providers import (
    HttpProvider,
    OutgoingMessage,
    PermanentProviderError,
    RetryableProviderError,
)
from services.dispatcher.service import RateLimiter
from shared.reasons import FailReason, SkipReason
from tests.factories import send_requested


def test_render_fills_variables() -> None:
    assert domain.render("Hi {{ first_name }}!", {"first_name": "Ada"}) == "Hi Ada!"


def test_render_refuses_a_missing_variable() -> None:
    with pytest.raises(domain.RenderError, match="first_name"):
        domain.render("Hi {{ first_name }}!", {})


def test_render_is_sandboxed() -> None:
    with pytest.raises(domain.RenderError):
        domain.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_outcomes_carry_the_request_identity() -> None:
    req = send_requested(recipient_id=42)
    for outcome, status in ((domain.sent(req, "p1"), "completed"),
                            (domain.failed(req, "nope"), "failed"),
                            (domain.skipped(req, "missing_address"), "skipped")):
        assert (outcome.campaign_id, outcome.recipient_id, outcome.status) == (
            req.campaign_id, 42, status)


def test_typed_reasons_go_on_the_wire_as_the_plain_strings_consumers_read() -> None:
    req = send_requested(recipient_id=7)
    skipped = domain.skipped(req, SkipReason.OPTED_OUT)
    failed = domain.failed(req, FailReason.TEMPLATE_ERROR)
    assert type(skipped.reason) is str and skipped.reason == "opted_out"
    assert type(failed.reason) is str and failed.reason == "template_error"
    assert b'"reason":"opted_out"' in skipped.to_bytes()


def _message() -> OutgoingMessage:
    return OutgoingMessage(channel="sms", to="+4511223344", sender="Office", subject=None,
                           body="hi", idempotency_key="k1")


@asynccontextmanager
async def _provider(
    status: int, body: dict[str, str], seen: list[web.Request] | None = None
) -> AsyncIterator[HttpProvider]:
    """The adapter against a real HTTP server on loopback that answers `status` with `body`."""

    async def handler(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/messages", handler)
    async with TestServer(app) as server:
        provider = HttpProvider(str(server.make_url("")), timeout=2, max_connections=2)
        try:
            yield provider
        finally:
            await provider.close()


async def test_http_provider_returns_the_provider_message_id_and_sends_idempotency_key() -> None:
    seen: list[web.Request] = []
    async with _provider(202, {"id": "m-1"}, seen) as provider:
        assert await provider.send(_message()) == "m-1"
    assert seen[0].headers["Idempotency-Key"] == "k1"


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_http_provider_throttling_and_server_errors_are_retryable(status: int) -> None:
    async with _provider(status, {"error": "busy"}) as provider:
        with pytest.raises(RetryableProviderError, match=f"HTTP {status}: busy"):
            await provider.send(_message())


async def test_http_provider_client_errors_are_permanent_with_the_provider_reason() -> None:
    async with _provider(422, {"error": "landline"}) as provider:
        with pytest.raises(PermanentProviderError, match="landline"):
            await provider.send(_message())


async def test_http_provider_connection_failure_is_retryable() -> None:
    provider = HttpProvider("http://127.0.0.1:9", timeout=2, max_connections=1)
    try:
        with pytest.raises(RetryableProviderError, match="Connect"):
            await provider.send(_message())
    finally:
        await provider.close()


async def test_rate_limiter_spaces_out_calls() -> None:
    import time

    limiter = RateLimiter(rate=50)
    start = time.monotonic()
    for _ in range(60):
        await limiter.acquire()
    # 50 tokens at once, then 10 more at 50/s: at least ~0.2 s.
    assert time.monotonic() - start >= 0.18


_JINJA = domain._ENV  # the shared sandbox (shared.templating) that renders every other template
PLAIN_TEMPLATES = [
    "Hello {{ first_name }} {{ last_name }}, polls open at 8:00.",
    "{{first_name}}{{last_name}}",
    "no variables at all",
    "",
    "line one\n{{ first_name }}\n",  # Jinja drops one trailing newline
    "  {{- first_name -}}  ! {# a comment #}{% raw %}{{ raw }}{% endraw %}",
    "{{ n }} {{ flag }} {{ nothing }} {{ items }} {{ city }}",
]
VARIABLES = {"first_name": "Åse", "last_name": "<b>&amp;</b>", "n": 3.5, "flag": True,
             "nothing": None, "items": [1, {"a": "b"}], "city": "Aarhus"}


def _outcome(render: Callable[[], str]) -> str:
    try:
        return render()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("text", PLAIN_TEMPLATES)
@pytest.mark.parametrize("variables", [VARIABLES, {**VARIABLES, "items": "1, 2"}])
def test_text_and_variable_templates_render_as_the_sandbox_renders_them(
    text: str, variables: dict[str, object]
) -> None:
    assert domain._plain_parts(_JINJA.parse(text)) is not None  # the fast path is taken
    assert _outcome(lambda: domain.render(text, variables)) == _outcome(
        lambda: _JINJA.from_string(text).render(**variables))


def test_the_fast_path_outputs_only_text_and_numbers_like_the_sandbox() -> None:
    text = "{{ n }} {{ flag }} [{{ nothing }}] {{ city }}"
    assert domain.render(text, VARIABLES) == "3.5 True [] Aarhus"
    with pytest.raises(domain.RenderError, match="an output got a list"):
        domain.render("{{ items }}", VARIABLES)


@pytest.mark.parametrize("text", ["Hi {{ first_name }} {{ last_name }}", "{{ last_name }}"])
def test_a_missing_variable_fails_with_the_sandboxs_reason(text: str) -> None:
    with pytest.raises(UndefinedError) as jinja:
        _JINJA.from_string(text).render(first_name="Ada")
    with pytest.raises(domain.RenderError) as ours:
        domain.render(text, {"first_name": "Ada"})
    assert str(ours.value) == f"template_error: {jinja.value}" == \
        "template_error: 'last_name' is undefined"


@pytest.mark.parametrize("text", [
    "{{ first_name | upper }}", "{{ user.name }}", "{{ names[0] }}", "{{ range(3) | join(',') }}",
    "{% if vip %}Dear{% endif %} {{ first_name }}", "{{ first_name ~ '!' }}",
])
def test_templates_doing_more_than_output_variables_go_through_the_sandbox(text: str) -> None:
    assert domain._plain_parts(_JINJA.parse(text)) is None
    variables = {"first_name": "ada", "user": {"name": "Ada"}, "names": ["Ada"], "vip": True}
    assert domain.render(text, variables) == _JINJA.from_string(text).render(**variables)


@pytest.mark.parametrize("text", ["{{ self }}", "{{ range }}", "{{ first_name.upper }}"])
def test_an_object_that_is_not_text_or_a_number_is_refused_not_printed(text: str) -> None:
    with pytest.raises(domain.RenderError, match="an output got") as problem:
        domain.render(text, {"first_name": "ada"})
    assert " at 0x" not in str(problem.value)


def test_the_sandbox_still_guards_templates_off_the_plain_path() -> None:
    with pytest.raises(domain.RenderError, match="unsafe"):
        domain.render("{{ first_name.__class__.__mro__ }}", {"first_name": "Ada"})
