"""The provider registry: a provider's name, as the settings use it, → how to build its adapter
from the settings; which channels each may serve; and a channel's chain (one provider, or a
failover chain of several). A new provider is its module in this package, its line in
`ADAPTERS` and `CHANNEL_PROVIDERS`, and its settings (services/dispatcher/settings.py)."""

from __future__ import annotations

from collections.abc import Callable

from services.dispatcher import metrics
from services.dispatcher.limiter import AdaptiveLimiter
from services.dispatcher.providers.aiosmtp import SmtpProvider
from services.dispatcher.providers.base import NoopProvider, Provider
from services.dispatcher.providers.failover import FailoverProvider
from services.dispatcher.providers.http import HttpProvider
from services.dispatcher.providers.smtp import LeanSmtpProvider, SmtpOptions
from services.dispatcher.providers.twilio import TwilioProvider
from services.dispatcher.settings import DispatcherSettings
from shared.events import Channel

CHANNEL_PROVIDERS: dict[Channel, frozenset[str]] = {
    "email": frozenset({"noop", "http", "smtp"}),
    "sms": frozenset({"noop", "http", "twilio"}),
}


def _chain_names(settings: DispatcherSettings, channel: Channel) -> list[str]:
    """The names set for a channel's chain, or its one provider's name."""
    chain = settings.email_providers if channel == "email" else settings.sms_providers
    if chain.strip():
        return [n.strip() for n in chain.split(",") if n.strip()]
    single = settings.email_provider if channel == "email" else settings.sms_provider
    return [settings.provider or single]


def provider_chain(settings: DispatcherSettings, channel: Channel) -> list[str]:
    """The providers of a channel, first choice first (one, unless a chain is set)."""
    names = _chain_names(settings, channel)
    unknown = [n for n in names if n not in CHANNEL_PROVIDERS[channel]]
    if unknown:
        raise ValueError(f"{channel} providers: {unknown} unknown; one of "
                         f"{sorted(CHANNEL_PROVIDERS[channel])}")
    if len(set(names)) != len(names):
        raise ValueError(f"{channel} providers: {names} names one twice")
    return names


def provider_names(settings: DispatcherSettings) -> dict[Channel, str]:
    """The provider label of each channel's metrics: its adapter, or its chain (`twilio,http`)."""
    return {channel: ",".join(provider_chain(settings, channel))
            for channel in ("email", "sms")}


def build_providers(settings: DispatcherSettings) -> dict[Channel, Provider]:
    """One provider per channel: an adapter, or a failover chain of them. An adapter named
    for both channels (`http`) is one instance: one pool of connections, one health. Each
    adapter is timed and counted under its own name (services/dispatcher/metrics.py)."""
    built: dict[str, Provider] = {}

    def adapter(name: str) -> Provider:
        if name not in built:
            built[name] = metrics.MeteredProvider(_adapter(settings, name), name)
        return built[name]

    providers: dict[Channel, Provider] = {}
    for channel in ("email", "sms"):
        names = provider_chain(settings, channel)
        if len(names) == 1:
            providers[channel] = adapter(names[0])
        else:
            providers[channel] = FailoverProvider(
                [(name, adapter(name)) for name in names],
                errors=settings.failover_errors,
                window_seconds=settings.failover_window_seconds,
                pause_seconds=settings.failover_pause_seconds,
                doubt_errors=settings.failover_doubt_errors,
            )
    return providers


def adapters_of(providers: dict[Channel, Provider]) -> list[Provider]:
    """Every adapter once (chains' members included): what to close at the end."""
    found: dict[int, Provider] = {}
    for provider in providers.values():
        members = provider.members if isinstance(provider, FailoverProvider) else [provider]
        for member in members:
            found.setdefault(id(member), member)
    return list(found.values())


def _limiter(settings: DispatcherSettings) -> tuple[int, AdaptiveLimiter | None]:
    """An HTTP provider's cap on calls in flight, and its adaptive limiter if on."""
    cap = settings.provider_max_concurrency or settings.concurrency
    if not settings.provider_adaptive_concurrency:
        return cap, None
    return cap, AdaptiveLimiter(maximum=cap, initial=settings.provider_initial_concurrency)


def _http(settings: DispatcherSettings) -> Provider:
    cap, limiter = _limiter(settings)
    return HttpProvider(settings.provider_url, timeout=settings.provider_timeout_seconds,
                        max_connections=cap, limiter=limiter)


def _twilio(settings: DispatcherSettings) -> Provider:
    token = settings.twilio_auth_token
    cap, limiter = _limiter(settings)
    return TwilioProvider(
        settings.twilio_base_url, settings.twilio_account_sid,
        token.get_secret_value() if token else "",
        from_number=settings.twilio_from,
        messaging_service_sid=settings.twilio_messaging_service_sid,
        status_callback=settings.twilio_status_callback,
        timeout=settings.provider_timeout_seconds,
        max_connections=cap,
        limiter=limiter,
    )


def _adapter(settings: DispatcherSettings, name: str) -> Provider:
    return ADAPTERS[name](settings)


def build_smtp(settings: DispatcherSettings) -> Provider:
    if settings.smtp_client == "aiosmtplib":
        return SmtpProvider(
            settings.smtp_host, settings.smtp_port, connections=settings.smtp_connections,
            timeout=settings.provider_timeout_seconds, username=settings.smtp_username,
            password=settings.smtp_password, starttls=settings.smtp_starttls,
        )
    return LeanSmtpProvider(SmtpOptions(
        settings.smtp_host, settings.smtp_port, timeout=settings.provider_timeout_seconds,
        username=settings.smtp_username, password=settings.smtp_password,
        starttls=settings.smtp_starttls, use_tls=settings.smtp_tls,
        local_hostname=settings.smtp_local_hostname, pipelining=settings.smtp_pipelining,
    ), connections=settings.smtp_connections)


# The provider registry: a name (as the settings use it) → how to build that adapter from the
# settings. A new provider is its module plus a line here and in CHANNEL_PROVIDERS.
ADAPTERS: dict[str, Callable[[DispatcherSettings], Provider]] = {
    "noop": lambda _settings: NoopProvider(),
    "http": _http,
    "smtp": build_smtp,
    "twilio": _twilio,
}
