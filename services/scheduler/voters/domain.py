"""Voter directory domain: commands, validation, normalisation and the voter CSV's rows (read
by the scheduler's one CSV reader, services/scheduler/csv_reader.py). No I/O."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.scheduler.addresses import normalise_email, normalise_phone
from services.scheduler.campaigns import model
from services.scheduler.csv_reader import IncrementalCsv
from services.scheduler.domain import Invalid, InvalidTransition
from shared.text import INT64_MAX

# Organisations do not exist yet. Every voter and list is written with this one, so that
# organisations can come later without a data migration.
DEFAULT_ORG = uuid.UUID("00000000-0000-0000-0000-000000000001")

COLUMNS = ("external_id", "first_name", "last_name", "email", "phone", "preferred_language")
# What identifies a voter on upsert, in this order (see voter_match_key in 010_voters.sql).
IDENTITY = ("external_id", "email", "phone")
# Campaign states in which a campaign sends nothing more: snapshots may be erased at once.
FINISHED = model.FINISHED

_MAX_LENGTH = {
    "external_id": 200, "first_name": 200, "last_name": 200, "email": 320, "phone": 64,
    "preferred_language": 35,
}
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$", re.IGNORECASE)
_PHONE_LIKE = re.compile(r"^\+?[\d\s().-]+$")


class VoterFields(NamedTuple):
    """A voter's fields, validated and normalised (email: domain lower-cased; phone: E.164)."""

    external_id: str | None
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    preferred_language: str | None
    attributes: dict[str, Any]


class ImportRow(NamedTuple):
    """One good CSV row, in the column order of the import's staging table."""

    line: int
    external_id: str | None
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    preferred_language: str | None
    attributes: dict[str, Any]


def normalise_language(value: str) -> str:
    if not _LANGUAGE.match(value):
        raise ValueError(f"invalid preferred_language {value[:40]!r}: expected e.g. da, en-GB")
    primary, _, rest = value.partition("-")
    return primary.lower() + (f"-{rest}" if rest else "")


def _check_text(values: dict[str, str | None], attributes: dict[str, Any]) -> None:
    """Raise ValueError on a value too long or holding a NUL character."""
    for name, value in values.items():
        if value is None:
            continue
        if len(value) > _MAX_LENGTH[name]:
            raise ValueError(f"{name} longer than {_MAX_LENGTH[name]} characters")
        if "\x00" in value:
            raise ValueError(f"{name} contains a NUL character")
    # PostgreSQL's jsonb refuses \u0000 anywhere in a document.
    if attributes and "\\u0000" in json.dumps(attributes):
        raise ValueError("attributes contain a NUL character")


def voter_fields(
    values: dict[str, str | None], attributes: dict[str, Any], region: str
) -> VoterFields:
    """Validate and normalise; `values` maps COLUMNS to stripped text or None (blank).

    Raises ValueError naming the first problem.
    """
    _check_text(values, attributes)
    if not any(values.get(name) for name in IDENTITY):
        raise ValueError("a voter needs an external_id, an email or a phone")
    email, phone, language = values.get("email"), values.get("phone"), values.get(
        "preferred_language")
    return VoterFields(
        external_id=values.get("external_id"),
        first_name=values.get("first_name"),
        last_name=values.get("last_name"),
        email=normalise_email(email) if email else None,
        phone=normalise_phone(phone, region) if phone else None,
        preferred_language=normalise_language(language) if language else None,
        attributes=attributes,
    )


def _blank_is_missing(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


class VoterIn(BaseModel):
    """Command: create a voter. Attributes are template variables of the campaigns they join."""

    model_config = ConfigDict(extra="forbid")

    external_id: str | None = Field(default=None, max_length=200)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    preferred_language: str | None = Field(default=None, max_length=35)
    attributes: dict[str, Any] = Field(default_factory=dict)

    _blank = field_validator(*COLUMNS, mode="before")(_blank_is_missing)


class EditVoter(VoterIn):
    """Command: change the fields given (a field given as null or blank is cleared)."""


def new_voter(cmd: VoterIn, region: str) -> VoterFields:
    try:
        return voter_fields({c: getattr(cmd, c) for c in COLUMNS}, cmd.attributes, region)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


def edited_voter(current: VoterFields, cmd: EditVoter, region: str) -> VoterFields:
    given = cmd.model_fields_set
    values = {c: getattr(cmd, c) if c in given else getattr(current, c) for c in COLUMNS}
    # Stored values are normalised already; normalising them again is a no-op.
    attributes = cmd.attributes if "attributes" in given else current.attributes
    try:
        return voter_fields(values, attributes, region)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


class CreateList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)

    @field_validator("name")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        return value.strip()


class VoterIds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    voter_ids: list[Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]] = Field(
        min_length=1, max_length=10_000)


class TargetLists(BaseModel):
    """Command: a draft campaign sends to these lists' voters (added to those it targets)."""

    model_config = ConfigDict(extra="forbid")

    list_ids: list[uuid.UUID] = Field(min_length=1, max_length=100)


def ensure_can_target_lists(campaign_id: uuid.UUID, state: str) -> None:
    model.ensure_allowed(campaign_id, state, model.TARGET_LISTS)


def ensure_list_unused(list_id: uuid.UUID, unstarted: list[tuple[uuid.UUID, str]]) -> None:
    """A list may go once no campaign that has yet to start targets it (started ones hold a
    snapshot of its voters already)."""
    if unstarted:
        campaign_id, state = unstarted[0]
        raise InvalidTransition(campaign_id, state, f"delete list {list_id}")


def search_pattern(q: str) -> str:
    """The LIKE pattern of a search: a case-insensitive substring of name, email or phone.

    A phone-like query loses its spaces and punctuation, since phones are stored as E.164.
    """
    term = " ".join(q.lower().split())
    if not term:
        raise Invalid("q must not be blank")
    if _PHONE_LIKE.match(term) and sum(c.isdigit() for c in term) >= 3:
        term = ("+" if term.startswith("+") else "") + re.sub(r"\D", "", term)
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class CsvImport(IncrementalCsv[ImportRow]):
    """Parses a voter CSV: COLUMNS are voter fields, any other column is an attribute."""

    COLUMNS = COLUMNS
    REQUIRED_ONE_OF = IDENTITY

    def __init__(self, region: str) -> None:
        super().__init__()
        self._region = region

    def _row(self, fields: list[str], line: int) -> ImportRow | None:
        split = self._split(fields, line)
        if split is None:
            return None
        try:
            v = voter_fields(*split, self._region)
        except ValueError as exc:
            self.reject(line, str(exc))
            return None
        return ImportRow(line, *v)


def as_fields(row: Any) -> VoterFields:
    """A stored voter row's fields."""
    return VoterFields(**{f: row[f] for f in VoterFields._fields})

