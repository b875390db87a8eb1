"""Users and their API tokens (administration, behind SENDOUT_ADMIN_TOKEN), and people's
sign-in and password. A token is shown once, in the answer that issues it."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from services.scheduler.entrypoints.http.dependencies import ADMIN, Caller, IdentityUow, Running
from services.scheduler.identity import use_cases
from services.scheduler.identity.model import ChangePassword, CreateUser, SignIn, WrongPassword
from shared.auth import Principal

admin = APIRouter(tags=["admin"], dependencies=ADMIN)
auth = APIRouter(prefix="/auth", tags=["sign-in"])


def user_view(user: Principal, **extra: Any) -> dict[str, Any]:
    return {"user_id": str(user.user_id), "organisation_id": str(user.organisation_id),
            "name": user.name, **extra}


@admin.post("/admin/users", status_code=201)
async def create_user(cmd: CreateUser, uow: IdentityUow) -> dict[str, Any]:
    """Creates the organisation if new, and the user (or, for an existing user, a further
    token); the API token is shown only here. An optional password (and e-mail) lets the
    user sign in to the console."""
    user, token = await use_cases.create_user(uow, cmd)
    return user_view(user, token=token)


@admin.post("/admin/users/{user_id}/tokens", status_code=201)
async def add_token(user_id: uuid.UUID, uow: IdentityUow) -> dict[str, Any]:
    """A further token for the user (e.g. to rotate: add, switch, then revoke the old)."""
    user, token = await use_cases.add_token(uow, user_id)
    return user_view(user, token=token)


@admin.delete("/admin/users/{user_id}/tokens")
async def revoke_tokens(user_id: uuid.UUID, uow: IdentityUow) -> dict[str, Any]:
    """Revoke every token of the user, in every service."""
    user, revoked = await use_cases.revoke_all_tokens(uow, user_id)
    return user_view(user, revoked=revoked)


@auth.post("/sign-in")
async def sign_in(cmd: SignIn, request: Request, scheduler: Running) -> dict[str, Any]:
    """A person's sign-in (user name or e-mail + password) → a fresh API token for them.
    The same 401 for an unknown login and a wrong password; 429 after repeated failures."""
    login = cmd.login.strip()
    login_key = f"login:{login.lower()}"
    client_key = f"client:{request.client.host if request.client else '?'}"
    limiter, clients = scheduler.sign_ins, scheduler.client_sign_ins
    wait = max(limiter.retry_after(login_key), clients.retry_after(client_key))
    if wait > 0:
        raise HTTPException(429, "too many failed sign-ins; try again later",
                            headers={"Retry-After": str(int(wait) + 1)})
    signed_in = await use_cases.sign_in(scheduler.uow(), login, cmd.password)
    if signed_in is None:
        limiter.failed(login_key)
        clients.failed(client_key)
        raise HTTPException(401, "wrong user name, e-mail or password")
    limiter.succeeded(login_key)
    return signed_in


@auth.put("/password")
async def change_password(
    cmd: ChangePassword, principal: Caller, uow: IdentityUow
) -> dict[str, Any]:
    """Change the caller's password: the current one is required."""
    try:
        await use_cases.change_password(uow, principal.user_id, cmd.current_password,
                                        cmd.new_password)
    except WrongPassword as wrong:
        raise HTTPException(403, str(wrong)) from wrong
    return {"user_id": str(principal.user_id), "changed": True}
