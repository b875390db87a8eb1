"""The voter CSV import over a fake unit of work: no network, no database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.scheduler.errors import Invalid, NotFound
from services.scheduler.voters.service import import_voters
from tests.unit.fake_scheduler_uow import ORG, FakeUnitOfWork

CSV = (
    b"external_id,first_name,email,phone,ward\n"
    b"x1,Ann,ann@example.org,+4520123456,North\n"     # line 2: superseded by line 3
    b"x1,Anne,ann@example.org,+4520123456,North\n"    # line 3
    b",Bo,bo@example.org,,South\n"                    # line 4
    b",Cy,not an address,,\n"                         # line 5: refused
    b"x1,Anne,ann@example.org,+4520123456,North\n"    # line 6: changes nothing
    b",Di,,20 12 34 57,East\n"                        # line 7
)


async def chunks(data: bytes, size: int = 16) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def voters(uow: FakeUnitOfWork) -> dict[str | None, dict[str, object]]:
    return uow.store.voters[ORG]


async def test_an_import_upserts_good_rows_into_a_list_and_lists_the_bad_ones() -> None:
    uow = FakeUnitOfWork()
    list_id = uuid.uuid4()
    uow.store.lists[list_id] = (ORG, set())
    result = await import_voters(uow, chunks(CSV), org=ORG, region="DK", list_id=list_id)
    assert (result.inserted, result.updated, result.unchanged, result.rejected) == (3, 0, 0, 3)
    # One batch (a small file): within it, the last row of a voter wins.
    assert result.view()["errors"] == [
        {"line": 2, "error": "same voter as line 6, which was kept"},
        {"line": 3, "error": "same voter as line 6, which was kept"},
        {"line": 5, "error": "invalid email: An email address must have an @-sign."},
    ]
    assert set(voters(uow)) == {"x:x1", "e:bo@example.org", "p:+4520123457"}
    assert voters(uow)["x:x1"]["first_name"] == "Anne"
    assert voters(uow)["x:x1"]["attributes"] == {"ward": "North"}
    assert uow.store.lists[list_id][1] == set(voters(uow))

    again = b"external_id,first_name\nx1,Anna\nx1,Anna\n"
    result = await import_voters(uow, chunks(again), org=ORG, region="DK")
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 0)
    # Only the file's columns change: the email and the ward stay.
    assert voters(uow)["x:x1"]["first_name"] == "Anna"
    assert voters(uow)["x:x1"]["email"] == "ann@example.org"
    assert voters(uow)["x:x1"]["attributes"] == {"ward": "North"}


async def test_a_large_import_is_written_in_batches_each_its_own_unit_of_work() -> None:
    uow = FakeUnitOfWork()
    # Rows are parsed as they arrive once the first 64 KiB told the encoding: a long note
    # makes a few hundred rows more than that.
    note = b"n" * 250
    rows = b"".join(b"x%d,Voter %d,%s\n" % (i, i, note) for i in range(400))
    # x0 again, renamed, in a later batch than the first: an update, not a superseded row.
    data = b"external_id,first_name,note\n" + rows + b"x0,Renamed,%s\n" % note
    result = await import_voters(uow, chunks(data, 4096), org=ORG, region="DK",
                                 batch_rows=100)
    assert (result.inserted, result.updated, result.unchanged, result.rejected) == (
        400, 1, 0, 0)
    assert uow.commits > 1
    assert len(voters(uow)) == 400 and voters(uow)["x:x0"]["first_name"] == "Renamed"


async def test_an_import_into_an_unknown_list_writes_nothing() -> None:
    uow = FakeUnitOfWork()
    with pytest.raises(NotFound, match=r"list .* not found"):
        await import_voters(uow, chunks(CSV), org=ORG, region="DK", list_id=uuid.uuid4())
    assert uow.store.voters == {} and uow.commits == 0


async def test_an_unreadable_header_is_invalid_before_anything_is_written() -> None:
    uow = FakeUnitOfWork()
    with pytest.raises(Invalid):
        await import_voters(uow, chunks(b"foo,bar\n1,2\n"), org=ORG, region="DK")
    assert uow.store.voters == {} and uow.commits == 0
