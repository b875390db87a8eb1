"""Identity's use cases: users (administration), their API tokens, people's sign-in and
password. Each takes a unit of work (identity/unit_of_work.py); a token's issue or revocation
is announced to the other services through the outbox, in the same transaction: published once
committed, never for a token a rollback undid. Password hashes are computed outside any
transaction (they are slow on purpose)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from services.scheduler import outbox
from services.scheduler.errors import NotFound
from services.scheduler.identity import model
from services.scheduler.identity.model import CreateUser, WrongPassword
from services.scheduler.identity.passwords import ARGON2
from services.scheduler.identity.unit_of_work import Hasher, UnitOfWork
from shared.auth import Principal, hash_token
from shared.events import ApiTokenIssued, ApiTokenRevoked

PublishIdentity = Callable[[list[ApiTokenIssued | ApiTokenRevoked]], Awaitable[None]]


async def create_user(
    uow: UnitOfWork, cmd: CreateUser, hasher: Hasher = ARGON2
) -> tuple[Principal, str]:
    """The organisation if new, and the user (or, for an existing user, a further token), with
    an optional password; the user and their new API token."""
    password_hash = await hasher.hash(cmd.password) if cmd.password else None
    async with uow:
        org = await uow.identity.ensure_organisation(cmd.organisation)
        user = Principal(await uow.identity.upsert_user(org, cmd.name), org, cmd.name)
        if password_hash:
            await uow.identity.set_password(user.user_id, password_hash, cmd.email)
        token = await issue_token(uow, user)
        await uow.commit()
    return user, token


async def _user_or_404(uow: UnitOfWork, user_id: uuid.UUID) -> Principal:
    user = await uow.identity.get_user(user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


async def add_token(uow: UnitOfWork, user_id: uuid.UUID) -> tuple[Principal, str]:
    """A further token for the user (e.g. to rotate: add, switch, then revoke the old)."""
    async with uow:
        user = await _user_or_404(uow, user_id)
        token = await issue_token(uow, user)
        await uow.commit()
    return user, token


async def revoke_all_tokens(uow: UnitOfWork, user_id: uuid.UUID) -> tuple[Principal, int]:
    """Revoke every token of the user, in every service."""
    async with uow:
        user = await _user_or_404(uow, user_id)
        revoked = await revoke_tokens(uow, user)
        await uow.commit()
    return user, revoked


async def sign_in(
    uow: UnitOfWork, login: str, password: str, hasher: Hasher = ARGON2
) -> dict[str, str] | None:
    """A person's sign-in → a fresh API token and who they are; None for an unknown login or
    a wrong password (told apart by nobody). The one user whose user name or e-mail is `login`
    and whose password this is; a login nobody has still costs one hash check, so its answer
    takes as long."""
    async with uow:
        candidates = await uow.identity.signing_in(login)
    matches = [c for c in candidates if await hasher.verify(c.password_hash, password)]
    if not candidates:
        await hasher.verify(hasher.dummy_hash, password)
    if len(matches) != 1:
        return None
    [who] = matches
    async with uow:
        token = await issue_token(uow, who.user)
        await uow.commit()
    return model.signed_in_view(who, token)


async def change_password(
    uow: UnitOfWork, user_id: uuid.UUID, current_password: str, new_password: str,
    hasher: Hasher = ARGON2,
) -> None:
    """The current password is required (`WrongPassword` if wrong)."""
    async with uow:
        current = await uow.identity.password_hash(user_id)
    if current is not None and not await hasher.verify(current, current_password):
        raise WrongPassword("the current password is wrong")
    new_hash = await hasher.hash(new_password)
    async with uow:
        await uow.identity.set_password(user_id, new_hash)
        await uow.commit()


async def issue_token(uow: UnitOfWork, user: Principal) -> str:
    """A new token for the user, inside the caller's unit of work; shown once."""
    token = model.new_token()
    token_hash = hash_token(token)
    await uow.identity.add_token(user.user_id, token_hash)
    await uow.add_to_outbox(outbox.identity([model.token_issued(user, token_hash)]))
    return token


async def revoke_tokens(uow: UnitOfWork, user: Principal) -> int:
    """Revoke the user's live tokens, inside the caller's unit of work; how many."""
    hashes = await uow.identity.revoke_tokens(user.user_id)
    await uow.add_to_outbox(outbox.identity(model.tokens_revoked(user, hashes)))
    return len(hashes)


async def publish_all_tokens(uow: UnitOfWork, publish: PublishIdentity) -> int:
    """At start: say again what every token is, so a tracker with a new database (or tokens
    issued before the identity topic existed) learns them. Idempotent for consumers."""
    async with uow:
        tokens = await uow.identity.all_tokens()
    events = model.restated(tokens)
    if events:
        await publish(events)
    return len(events)
