"""An in-memory unit of work for the scheduler's use cases (campaigns, the voter import,
identity, content, opt-outs): no network, no database.

It keeps what the asyncpg one stores (services/scheduler/adapters/uow.py), with the same
transaction semantics: the use case works on a copy, `commit()` makes the copy the stored
state, leaving without a commit leaves the stored state as it was (outbox records included).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from services.scheduler.campaigns.model import Campaign, Kind, State
from services.scheduler.campaigns.unit_of_work import Actor, OutboxRecord, RecipientsFit
from services.scheduler.domain import RecipientRow, Sender, SenderIn, TemplateIn, TemplateVersion
from services.scheduler.identity.model import SigningIn, StoredToken
from services.scheduler.outbox import check
from services.scheduler.voters.domain import COLUMNS as VOTER_COLUMNS
from services.scheduler.voters.domain import ImportRow
from shared import wire
from shared.auth import Principal

ORG = uuid.UUID("00000000-0000-0000-0000-00000000000a")
OTHER_ORG = uuid.UUID("00000000-0000-0000-0000-00000000000b")


def principal(name: str = "ada", org: uuid.UUID = ORG) -> Principal:
    return Principal(uuid.uuid5(org, name), org, name)


@dataclass
class StoredCampaign:
    id: uuid.UUID
    kind: Kind = Kind.MASS
    state: State = State.DRAFT
    organisation_id: uuid.UUID = ORG
    channels: list[str] = field(default_factory=lambda: ["email"])
    scheduled_for: datetime | None = None
    # The template's variables; recipients are rows as the recipients table holds them.
    variables: set[str] = field(default_factory=set)
    recipients: list[dict[str, Any]] = field(default_factory=list)
    # Voters of the campaign's target lists, not yet copied into its recipients.
    list_voters: list[dict[str, Any]] = field(default_factory=list)
    total: int | None = None
    started: bool = False
    fanout_rewound: bool = False
    abort_pending: int | None = None
    final_counts: dict[str, Any] | None = None


@dataclass
class Store:
    campaigns: dict[uuid.UUID, StoredCampaign] = field(default_factory=dict)
    # user id -> the campaign the user is sending from (the p2p_senders table).
    senders: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    opt_outs: set[tuple[uuid.UUID, str]] = field(default_factory=set)
    processed: set[uuid.UUID] = field(default_factory=set)
    audit: list[tuple[uuid.UUID, str, str, dict[str, Any]]] = field(default_factory=list)
    outbox: list[tuple[int, OutboxRecord]] = field(default_factory=list)
    next_outbox_id: int = 1
    next_recipient_id: int = 1
    # The voter directory: voters by organisation and identity (match key); lists by id, with
    # their organisation and their members' identities.
    voters: dict[uuid.UUID, dict[str | None, dict[str, Any]]] = field(default_factory=dict)
    lists: dict[uuid.UUID, tuple[uuid.UUID, set[str | None]]] = field(default_factory=dict)
    # Senders and template versions by id, each with its organisation.
    sender_rows: dict[uuid.UUID, tuple[uuid.UUID, Sender]] = field(default_factory=dict)
    templates: dict[uuid.UUID, tuple[uuid.UUID, list[TemplateVersion]]] = field(
        default_factory=dict)
    # Identity: organisations by name; users by id; API tokens in the order issued.
    organisations: dict[str, uuid.UUID] = field(default_factory=dict)
    users: dict[uuid.UUID, StoredUser] = field(default_factory=dict)
    tokens: list[StoredToken] = field(default_factory=list)


@dataclass
class StoredUser:
    id: uuid.UUID
    organisation_id: uuid.UUID
    name: str
    email: str | None = None
    password_hash: str | None = None


def recipient(**fields: Any) -> dict[str, Any]:
    row = {"email": None, "email_invalid": False, "phone": None, "phone_invalid": False,
           "first_name": None, "last_name": None, "attributes": {}, "voter_id": None,
           "pressed_at": None}
    return row | fields


class FakeCampaigns:
    def __init__(self, store: Store, now: datetime) -> None:
        self._s = store
        self._now = now

    async def add_sender(self, sender: SenderIn, organisation_id: uuid.UUID) -> Sender:
        added = Sender(uuid.uuid4(), sender.name, sender.email, sender.sms_sender_id)
        self._s.sender_rows[added.id] = (organisation_id, added)
        return added

    async def sender(self, sender_id: uuid.UUID, organisation_id: uuid.UUID) -> Sender | None:
        org, found = self._s.sender_rows.get(sender_id, (None, None))
        return found if org == organisation_id else None

    async def add_template(
        self, template: TemplateIn, organisation_id: uuid.UUID
    ) -> TemplateVersion:
        version = TemplateVersion(uuid.uuid4(), 1, template.email_subject, template.email_body,
                                  template.sms_body)
        self._s.templates[version.template_id] = (organisation_id, [version])
        return version

    async def latest_template(
        self, template_id: uuid.UUID, organisation_id: uuid.UUID
    ) -> TemplateVersion | None:
        org, versions = self._s.templates.get(template_id, (None, []))
        return versions[-1] if org == organisation_id else None

    async def add(
        self, *, name: str, kind: Kind, channels: Sequence[str], sender_id: uuid.UUID,
        template: TemplateVersion, organisation_id: uuid.UUID,
    ) -> uuid.UUID:
        campaign_id = uuid.uuid4()
        self._s.campaigns[campaign_id] = StoredCampaign(
            id=campaign_id, kind=kind, organisation_id=organisation_id, channels=list(channels),
            variables=template.variables(channels))  # type: ignore[arg-type]
        return campaign_id

    async def add_recipients(
        self, campaign_id: uuid.UUID, rows: Sequence[RecipientRow]
    ) -> int:
        c = self._c(campaign_id)
        for row in rows:
            c.recipients.append(recipient(id=self._s.next_recipient_id, **vars(row)))
            self._s.next_recipient_id += 1
        return len(rows)

    async def voter(
        self, organisation_id: uuid.UUID, voter_id: int
    ) -> Mapping[str, Any] | None:
        found = (v for v in self._s.voters.get(organisation_id, {}).values()
                 if v.get("id") == voter_id)
        return next(found, None)

    def _c(self, campaign_id: uuid.UUID) -> StoredCampaign:
        return self._s.campaigns[campaign_id]

    @staticmethod
    def _model(c: StoredCampaign) -> Campaign:
        return Campaign(id=c.id, kind=c.kind, state=c.state, organisation_id=c.organisation_id,
                        scheduled_for=c.scheduled_for, channels=list(c.channels))

    async def get(
        self, campaign_id: uuid.UUID, organisation_id: uuid.UUID | None = None,
        *, share: bool = False,
    ) -> Campaign | None:
        c = self._s.campaigns.get(campaign_id)
        if c is None or (organisation_id is not None and c.organisation_id != organisation_id):
            return None
        return self._model(c)

    async def claim_due(self, limit: int) -> list[Campaign]:
        due = sorted((c for c in self._s.campaigns.values()
                      if c.state is State.SCHEDULED and c.scheduled_for is not None
                      and c.scheduled_for <= self._now), key=lambda c: c.scheduled_for or 0)
        return [self._model(c) for c in due[:limit]]

    async def recipients_fit(self, campaign_id: uuid.UUID) -> RecipientsFit:
        c = self._c(campaign_id)
        count = len(c.recipients) + len(c.list_voters)
        missing = [r["id"] for r in c.recipients
                   if any(r.get(v) is None and v not in r["attributes"] for v in c.variables)]
        return RecipientsFit(count, set(c.variables), len(missing), missing)

    async def snapshot_lists(self, campaign_id: uuid.UUID) -> int:
        c = self._c(campaign_id)
        copied = c.list_voters
        for voter in copied:
            c.recipients.append(recipient(**voter, id=self._s.next_recipient_id))
            self._s.next_recipient_id += 1
        c.list_voters = []
        return len(copied)

    async def start_sending(self, campaign_id: uuid.UUID) -> int:
        c = self._c(campaign_id)
        c.state, c.started = State.SENDING, True
        c.total = len(c.channels) * len(c.recipients)
        return c.total

    async def set_scheduled(self, campaign_id: uuid.UUID, at: datetime) -> None:
        c = self._c(campaign_id)
        c.state, c.scheduled_for = State.SCHEDULED, at

    async def set_draft(self, campaign_id: uuid.UUID) -> None:
        c = self._c(campaign_id)
        c.state, c.scheduled_for = State.DRAFT, None

    async def set_aborting(self, campaign_id: uuid.UUID) -> None:
        self._c(campaign_id).state = State.ABORTING

    async def set_abort_pending(self, campaign_id: uuid.UUID, pending: int) -> None:
        self._c(campaign_id).abort_pending = pending

    async def end(self, campaign_id: uuid.UUID) -> None:
        c = self._c(campaign_id)
        c.state, c.fanout_rewound = State.COMPLETED, True

    async def finish(
        self, campaign_id: uuid.UUID, state: State, counts: dict[str, Any]
    ) -> None:
        c = self._c(campaign_id)
        if c.state in (State.SENDING, State.ABORTING, State.COMPLETED):
            c.state, c.final_counts = state, counts

    async def total(self, campaign_id: uuid.UUID) -> int:
        return self._c(campaign_id).total or 0

    async def clear_presses(self, campaign_id: uuid.UUID) -> None:
        for r in self._c(campaign_id).recipients:
            r["pressed_at"] = None

    async def pressed_count(self, campaign_id: uuid.UUID) -> int:
        return sum(r["pressed_at"] is not None for r in self._c(campaign_id).recipients)

    async def release_senders(self, campaign_ids: Sequence[uuid.UUID]) -> None:
        for user, campaign in list(self._s.senders.items()):
            if campaign in campaign_ids:
                del self._s.senders[user]

    async def claim_sender(
        self, user_id: uuid.UUID, campaign_id: uuid.UUID
    ) -> tuple[bool, uuid.UUID | None]:
        if user_id in self._s.senders:
            return False, self._s.senders[user_id]
        self._s.senders[user_id] = campaign_id
        return True, campaign_id

    async def is_sender(self, user_id: uuid.UUID, campaign_id: uuid.UUID) -> bool:
        return self._s.senders.get(user_id) == campaign_id

    async def press(
        self, campaign_id: uuid.UUID, recipient_id: int, user_id: uuid.UUID
    ) -> tuple[Mapping[str, Any] | None, bool]:
        for r in self._c(campaign_id).recipients:
            if r["id"] == recipient_id:
                first = r["pressed_at"] is None
                if first:
                    r["pressed_at"] = self._now
                return dict(r), first
        return None, False

    async def context(self, campaign_id: uuid.UUID) -> wire.CampaignContext:
        c = self._c(campaign_id)
        return wire.CampaignContext(
            organisation_id=c.organisation_id,
            template=wire.TemplateRef(id=uuid.uuid5(c.id, "template"), version=1),
            templates={ch: wire.ChannelTemplate(body="Hi {{ first_name }}")
                       for ch in c.channels},
            sender=wire.SenderInfo(name="Sender", email="from@example.org",
                                   sms_sender_id="Sendout"),
        )

    async def opted_out(
        self, organisation_id: uuid.UUID, addresses: Sequence[str]
    ) -> set[str]:
        return {a for a in addresses if (organisation_id, a) in self._s.opt_outs}

    async def wait_for_fanout_pass(self, campaign_id: uuid.UUID) -> None:
        return None

    async def first_time(self, event_id: uuid.UUID) -> bool:
        if event_id in self._s.processed:
            return False
        self._s.processed.add(event_id)
        return True

    async def audit(
        self, campaign_id: uuid.UUID, action: str, actor: Actor, details: dict[str, Any]
    ) -> None:
        name = actor.name if isinstance(actor, Principal) else actor
        self._s.audit.append((campaign_id, action, name, details))


def match_key(row: Mapping[str, Any]) -> str | None:
    """The voters' identity (voter_match_key in migration 010)."""
    if row["external_id"] is not None:
        return "x:" + row["external_id"]
    if row["email"] is not None:
        return "e:" + row["email"].lower()
    return "p:" + row["phone"] if row["phone"] is not None else None


class FakeVoters:
    def __init__(self, store: Store) -> None:
        self._s = store

    async def list_exists(self, organisation_id: uuid.UUID, list_id: uuid.UUID) -> bool:
        org, _ = self._s.lists.get(list_id, (None, set()))
        return org == organisation_id

    async def upsert_import_batch(
        self, organisation_id: uuid.UUID, rows: Sequence[ImportRow], *,
        columns: Sequence[str], merge_attributes: bool, list_id: uuid.UUID | None,
    ) -> tuple[int, int, list[tuple[int, int]]]:
        latest: dict[str | None, ImportRow] = {}
        for row in rows:  # the last row of an identity wins
            latest[match_key(row._asdict())] = row
        superseded = sorted((r.line, latest[match_key(r._asdict())].line) for r in rows
                            if latest[match_key(r._asdict())] is not r)
        inserted = updated = 0
        for key, row in latest.items():
            voters = self._s.voters.setdefault(organisation_id, {})
            new = row._asdict()
            current = voters.get(key)
            if current is None:
                voters[key] = {c: new[c] for c in (*VOTER_COLUMNS, "attributes")}
                inserted += 1
            else:
                changed = {c: new[c] for c in columns} | (
                    {"attributes": current["attributes"] | new["attributes"]}
                    if merge_attributes else {})
                if any(current[c] != v for c, v in changed.items()):
                    current.update(changed)
                    updated += 1
            if list_id is not None:
                self._s.lists[list_id][1].add(key)
        return inserted, updated, superseded


class FakeIdentity:
    def __init__(self, store: Store, now: datetime) -> None:
        self._s = store
        self._now = now

    async def organisation_exists(self, organisation_id: uuid.UUID) -> bool:
        return organisation_id in self._s.organisations.values()

    async def ensure_organisation(self, name: str) -> uuid.UUID:
        return self._s.organisations.setdefault(name, uuid.uuid4())

    async def upsert_user(self, organisation_id: uuid.UUID, name: str) -> uuid.UUID:
        for user in self._s.users.values():
            if (user.organisation_id, user.name) == (organisation_id, name):
                return user.id
        user = StoredUser(uuid.uuid4(), organisation_id, name)
        self._s.users[user.id] = user
        return user.id

    async def get_user(self, user_id: uuid.UUID) -> Principal | None:
        user = self._s.users.get(user_id)
        return Principal(user.id, user.organisation_id, user.name) if user else None

    async def password_hash(self, user_id: uuid.UUID) -> str | None:
        user = self._s.users.get(user_id)
        return user.password_hash if user else None

    async def set_password(
        self, user_id: uuid.UUID, password_hash: str, email: str | None = None
    ) -> None:
        user = self._s.users.get(user_id)
        if user is not None:
            user.password_hash, user.email = password_hash, email or user.email

    async def signing_in(self, login: str) -> list[SigningIn]:
        names = {org_id: name for name, org_id in self._s.organisations.items()}
        return [SigningIn(Principal(u.id, u.organisation_id, u.name), names[u.organisation_id],
                          u.password_hash)
                for u in self._s.users.values() if u.password_hash is not None
                and ((u.email or "").lower() == login.lower() or u.name == login)][:10]

    async def add_token(self, user_id: uuid.UUID, token_hash: bytes) -> None:
        user = self._s.users[user_id]
        self._s.tokens.append(StoredToken(token_hash, user.id, user.organisation_id, user.name,
                                          None))

    async def revoke_tokens(self, user_id: uuid.UUID) -> list[bytes]:
        revoked = [t for t in self._s.tokens if t.user_id == user_id and t.revoked_at is None]
        self._s.tokens = [replace(t, revoked_at=self._now) if t in revoked else t
                          for t in self._s.tokens]
        return [t.token_hash for t in revoked]

    async def all_tokens(self) -> list[StoredToken]:
        return list(self._s.tokens)


class FakeContent:
    """Senders and templates, in the store the campaigns' fake reads them from."""

    def __init__(self, store: Store, campaigns: FakeCampaigns) -> None:
        self._s = store
        self.add_sender = campaigns.add_sender
        self.sender = campaigns.sender
        self.add_template = campaigns.add_template
        self.latest_template = campaigns.latest_template

    async def lock_template(self, template_id: uuid.UUID, organisation_id: uuid.UUID) -> bool:
        org, _ = self._s.templates.get(template_id, (None, []))
        return org == organisation_id

    async def add_template_version(
        self, template_id: uuid.UUID, template: TemplateIn
    ) -> TemplateVersion:
        _, versions = self._s.templates[template_id]
        version = TemplateVersion(template_id, versions[-1].version + 1, template.email_subject,
                                  template.email_body, template.sms_body)
        versions.append(version)
        return version


class FakeOptOuts:
    def __init__(self, store: Store, campaigns: FakeCampaigns) -> None:
        self._s = store
        self.opted_out = campaigns.opted_out
        self.organisation_exists = FakeIdentity(store, datetime.now(UTC)).organisation_exists

    async def add(
        self, organisation_id: uuid.UUID, address: str, source: str, keyword: str | None
    ) -> bool:
        new = (organisation_id, address) not in self._s.opt_outs
        self._s.opt_outs.add((organisation_id, address))
        return new

    async def mark_voters(self, organisation_id: uuid.UUID, address: str) -> None:
        for voter in self._s.voters.get(organisation_id, {}).values():
            if voter["phone"] == address or (voter["email"] or "").lower() == address.lower():
                voter["opted_out"] = True


class FakeHasher:
    """Password hashes without argon2's cost: "hashed:" + the password."""

    dummy_hash = "hashed:not a password of anyone"

    def __init__(self) -> None:
        self.verified: list[str] = []

    async def hash(self, password: str) -> str:
        return "hashed:" + password

    async def verify(self, password_hash: str, password: str) -> bool:
        self.verified.append(password_hash)
        return password_hash == "hashed:" + password


class FakeUnitOfWork:
    campaigns: FakeCampaigns
    voters: FakeVoters
    identity: FakeIdentity
    content: FakeContent
    opt_outs: FakeOptOuts

    def __init__(self, store: Store | None = None, now: datetime | None = None) -> None:
        self.store = store or Store()
        self.now = now or datetime.now(UTC)
        self.commits = 0
        self._work: Store | None = None

    async def __aenter__(self) -> FakeUnitOfWork:
        assert self._work is None, "units of work do not nest"
        self._work = copy.deepcopy(self.store)
        self.campaigns = FakeCampaigns(self._work, self.now)
        self.voters = FakeVoters(self._work)
        self.identity = FakeIdentity(self._work, self.now)
        self.content = FakeContent(self._work, self.campaigns)
        self.opt_outs = FakeOptOuts(self._work, self.campaigns)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._work = None  # not committed: dropped, like a rollback

    def _working(self) -> Store:
        if self._work is None:
            raise RuntimeError("the unit of work is used inside `async with uow:`")
        return self._work

    async def add_to_outbox(self, records: Sequence[OutboxRecord]) -> int | None:
        work = self._working()
        check(records)
        for record in records:
            work.outbox.append((work.next_outbox_id, record))
            work.next_outbox_id += 1
        return work.next_outbox_id - 1 if records else None

    async def relayed(self, outbox_id: int | None) -> bool:
        return all(i != outbox_id for i, _ in self._working().outbox)

    async def commit(self) -> None:
        self.store = copy.deepcopy(self._working())
        self.commits += 1


class FakeFanOut:
    def __init__(self) -> None:
        self.kicked: list[uuid.UUID] = []

    def kick(self, campaign_id: uuid.UUID) -> None:
        self.kicked.append(campaign_id)
