"""The opt-out use cases: by the API, or a recipient's STOP reply (the routes are
entrypoints/http/opt_outs.py). Each takes a unit of work (opt_outs/unit_of_work.py); the
dispatchers learn of an opt-out through the outbox, once it commits."""

from __future__ import annotations

import uuid

from services.scheduler import outbox
from services.scheduler.errors import NotFound
from services.scheduler.opt_outs import model
from services.scheduler.opt_outs.unit_of_work import UnitOfWork


async def ensure_organisation_exists(uow: UnitOfWork, organisation_id: uuid.UUID) -> None:
    async with uow:
        if not await uow.opt_outs.organisation_exists(organisation_id):
            raise NotFound(f"organisation {organisation_id} not found")


async def opt_out(
    uow: UnitOfWork,
    organisation_id: uuid.UUID,
    address: str,
    *,
    source: str,
    keyword: str | None,
    region: str,
) -> str:
    """Opt the address out of the organisation's messages (again: harmless); its normalised
    form."""
    normalised = model.normalise_address(address, region)
    async with uow:
        await uow.opt_outs.add(organisation_id, normalised, source, keyword)
        await uow.opt_outs.mark_voters(organisation_id, normalised)
        await uow.add_to_outbox([outbox.opt_out(model.opted_out(organisation_id, normalised))])
        await uow.commit()
    return normalised
