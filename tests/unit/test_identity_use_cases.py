"""The scheduler's identity use cases (users, API tokens, sign-in, passwords) over a fake unit
of work and a fake password hasher: no network, no database, no argon2."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.scheduler.errors import NotFound
from services.scheduler.identity import use_cases
from services.scheduler.identity.model import CreateUser, WrongPassword
from shared import topics
from shared.auth import hash_token
from shared.events import IDENTITY, ApiTokenIssued, ApiTokenRevoked
from tests.unit.fake_scheduler_uow import FakeHasher, FakeUnitOfWork


def identity_events(uow: FakeUnitOfWork) -> list[Any]:
    assert all(topic == topics.IDENTITY for _, (topic, _, _) in uow.store.outbox)
    return [IDENTITY.validate_json(value) for _, (_, _, value) in uow.store.outbox]


async def created(uow: FakeUnitOfWork, hasher: FakeHasher, name: str = "ada",
                  **fields: Any) -> tuple[Any, str]:
    cmd = CreateUser(organisation="Election Office", name=name, **fields)
    return await use_cases.create_user(uow, cmd, hasher)


async def test_create_user_adds_the_organisation_once_and_announces_the_token() -> None:
    uow, hasher = FakeUnitOfWork(), FakeHasher()
    ada, token = await created(uow, hasher)
    bob, _ = await created(uow, hasher, "bob")
    assert ada.organisation_id == bob.organisation_id
    assert uow.store.organisations == {"Election Office": ada.organisation_id}
    assert token.startswith("so_") and uow.commits == 2
    first = identity_events(uow)[0]
    assert isinstance(first, ApiTokenIssued)
    assert (first.token_hash, first.user_id, first.user_name) == (
        hash_token(token).hex(), ada.user_id, "ada")
    assert uow.store.users[ada.user_id].password_hash is None


async def test_creating_an_existing_user_gives_a_further_token() -> None:
    uow, hasher = FakeUnitOfWork(), FakeHasher()
    ada, first = await created(uow, hasher)
    again, second = await created(uow, hasher)
    assert again == ada and first != second
    assert len(uow.store.users) == 1 and len(uow.store.tokens) == 2


async def test_create_user_with_a_password_and_email_stores_the_hash() -> None:
    uow, hasher = FakeUnitOfWork(), FakeHasher()
    ada, _ = await created(uow, hasher, password="long enough", email="ada@example.org")
    stored = uow.store.users[ada.user_id]
    assert (stored.password_hash, stored.email) == ("hashed:long enough", "ada@example.org")


async def test_add_token_and_revoke_all_tokens() -> None:
    uow, hasher = FakeUnitOfWork(), FakeHasher()
    ada, first = await created(uow, hasher)
    user, second = await use_cases.add_token(uow, ada.user_id)
    assert user == ada and second != first
    user, revoked = await use_cases.revoke_all_tokens(uow, ada.user_id)
    assert (user, revoked) == (ada, 2)
    events = identity_events(uow)
    assert [type(e) for e in events] == [ApiTokenIssued] * 2 + [ApiTokenRevoked] * 2
    assert {e.token_hash for e in events[2:]} == {hash_token(t).hex() for t in (first, second)}
    assert (await use_cases.revoke_all_tokens(uow, ada.user_id))[1] == 0


@pytest.mark.parametrize("use_case", [use_cases.add_token, use_cases.revoke_all_tokens])
async def test_tokens_of_an_unknown_user_are_not_found(use_case: Any) -> None:
    uow = FakeUnitOfWork()
    with pytest.raises(NotFound):
        await use_case(uow, uuid.uuid4())
    assert uow.commits == 0 and uow.store.outbox == []


async def test_sign_in_by_name_or_email_gives_a_fresh_token() -> None:
    uow, hasher = FakeUnitOfWork(), FakeHasher()
    ada, _ = await created(uow, hasher, password="long enough", email="Ada@Example.org")
    for login in ("ada", "ada@example.org"):
        answer = await use_cases.sign_in(uow, login, "long enough", hasher)
        assert answer is not None
        assert answer == {"token": answer["token"], "user_id": str(ada.user_id),
                          "organisation_id": str(ada.organisation_id),
                          "organisation": "Election Office", "name": "ada"}
    assert len(uow.store.tokens) == 3


async def test_a_wrong_password_and_an_unknown_login_answer_alike() -> None:
    uow, hasher = FakeUnitOfWork(), FakeHasher()
    await created(uow, hasher, password="long enough")
    tokens = len(uow.store.tokens)
    assert await use_cases.sign_in(uow, "ada", "wrong password", hasher) is None
    assert await use_cases.sign_in(uow, "nobody", "long enough", hasher) is None
    # The unknown login still cost a hash check.
    assert hasher.verified == ["hashed:long enough", FakeHasher.dummy_hash]
    assert len(uow.store.tokens) == tokens


async def test_sign_in_is_refused_when_two_users_match() -> None:
    uow, hasher = FakeUnitOfWork(), FakeHasher()
    await created(uow, hasher, "ada", password="long enough", email="desk@example.org")
    await created(uow, hasher, "bob", password="long enough", email="desk@example.org")
    assert await use_cases.sign_in(uow, "desk@example.org", "long enough", hasher) is None


async def test_change_password_needs_the_current_one() -> None:
    uow, hasher = FakeUnitOfWork(), FakeHasher()
    ada, _ = await created(uow, hasher, password="long enough")
    with pytest.raises(WrongPassword):
        await use_cases.change_password(uow, ada.user_id, "a guess", "a new password", hasher)
    assert uow.store.users[ada.user_id].password_hash == "hashed:long enough"
    await use_cases.change_password(uow, ada.user_id, "long enough", "a new password", hasher)
    assert uow.store.users[ada.user_id].password_hash == "hashed:a new password"


async def test_publish_all_tokens_says_what_each_token_is() -> None:
    uow, hasher = FakeUnitOfWork(), FakeHasher()
    ada, _ = await created(uow, hasher)
    await use_cases.revoke_all_tokens(uow, ada.user_id)
    await created(uow, hasher, "bob")
    published: list[list[Any]] = []

    async def publish(events: list[Any]) -> None:
        published.append(events)

    assert await use_cases.publish_all_tokens(uow, publish) == 2
    [events] = published
    assert [(type(e), e.user_id) for e in events] == [
        (ApiTokenRevoked, ada.user_id), (ApiTokenIssued, uow.store.tokens[1].user_id)]
    assert await use_cases.publish_all_tokens(FakeUnitOfWork(), publish) == 0
    assert len(published) == 1
