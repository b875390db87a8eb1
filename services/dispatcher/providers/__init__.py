"""The provider adapters: one module each (http, smtp, aiosmtp, twilio, the no-op in base),
the failover chain that composes them, and the registry (registry.py) that builds them from
the settings. A new provider is a module here plus its line in the registry and its settings
(docs/architecture.md)."""

from services.dispatcher.providers.aiosmtp import SmtpProvider
from services.dispatcher.providers.base import (
    NoopProvider,
    OutgoingMessage,
    PermanentProviderError,
    Provider,
    ProviderError,
    RetryableProviderError,
    check_header_safe,
)
from services.dispatcher.providers.http import HttpProvider, in_doubt, limited_request

__all__ = [
    "HttpProvider",
    "NoopProvider",
    "OutgoingMessage",
    "PermanentProviderError",
    "Provider",
    "ProviderError",
    "RetryableProviderError",
    "SmtpProvider",
    "check_header_safe",
    "in_doubt",
    "limited_request",
]
