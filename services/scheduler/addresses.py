"""Addresses, normalised one way for every input (voters, campaign recipients, opt-outs):
emails with their domain lower-cased and IDNA-checked, phones in E.164. No I/O.

`normalise_email` and `normalise_phone` raise ValueError naming the problem; an import refuses
the row with that message. `email_or_invalid` / `phone_or_invalid` keep an address that does
not validate, flagged (JSON recipients: skipped `invalid_address` at send time)."""

from __future__ import annotations

import functools
import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email

# RFC 5322 dot-atom of ASCII characters: what nearly every real address's local part is.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ATOM_LOCAL_PART = re.compile(rf"^{_ATOM}(\.{_ATOM})*$")


def normalise_email(value: str) -> str:
    """The address with its domain normalised (lower-cased, IDNA-checked), as email-validator
    has it. A plain ASCII local part takes a fast path: the domain is validated once per
    distinct domain, which halves the cost of an import where most voters share a few."""
    local, at, domain = value.rpartition("@")
    if at and len(local) <= 64 and _ATOM_LOCAL_PART.match(local):
        normalised = f"{local}@{_normalise_domain(domain)}"
        if len(normalised) <= 254:
            return normalised
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email: {exc}") from exc


@functools.lru_cache(maxsize=4096)
def _normalise_domain(domain: str) -> str:
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).domain
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email: {exc}") from exc


def normalise_phone(value: str, region: str) -> str:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"invalid phone: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"invalid phone: not a valid number (default region {region})")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

def email_or_invalid(value: str | None) -> tuple[str | None, bool]:
    """The normalised email and False, or the value as given and True if it does not
    validate."""
    if value is None:
        return None, False
    try:
        return normalise_email(value), False
    except ValueError:
        return value, True


def phone_or_invalid(value: str | None, region: str) -> tuple[str | None, bool]:
    """The phone in E.164 and False, or the value as given and True if it is not a valid
    number."""
    if value is None:
        return None, False
    try:
        return normalise_phone(value, region), False
    except ValueError:
        return value, True
