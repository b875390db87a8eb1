"""The scheduler's typed domain errors, mapped once at the HTTP edge (404, 409, 422)."""

from __future__ import annotations

import uuid
from typing import Any


class DomainError(Exception):
    """Base of the errors the HTTP edge maps to a 4xx."""


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    """The request conflicts with the current state of things (HTTP 409)."""

    state: str | None = None


class InvalidTransition(Conflict):
    def __init__(self, campaign_id: uuid.UUID, state: str, action: str) -> None:
        super().__init__(f"cannot {action}: campaign {campaign_id} is {state}")
        self.state = state


class Invalid(DomainError):
    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class Busy(Conflict):
    """A user sends one peer-to-peer campaign at a time; this one is sending another."""

    def __init__(self, user: str, campaign_id: uuid.UUID) -> None:
        super().__init__(f"user {user} is already sending campaign {campaign_id}; end it first")
        self.active_campaign = campaign_id
