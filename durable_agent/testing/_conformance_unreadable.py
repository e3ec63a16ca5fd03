"""Conformance tests of runs whose header cannot be read: listed as unreadable, never
hidden or pruned."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from durable_agent.backend import Backend, UnreadableReason
from durable_agent.errors import CorruptRunError, SchemaVersionError
from durable_agent.fsm import RunState
from durable_agent.records import utcnow
from durable_agent.testing._conformance_base import BackendTestCase, _ids, at, created, header


class UnreadableTests(BackendTestCase):
    """A run whose header cannot be read is listed as unreadable, never hidden or pruned.

    Uses the ``damage`` hook (a corrupt header) and the ``mark_newer_version``
    hook (a header from a newer durable-agent); each test skips without its hook.
    """

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        """Optional: make the run's stored header one a newer durable-agent wrote.

        Its ``schema_version`` becomes greater than `records.SCHEMA_VERSION`, the
        rest stays as it is, so `Backend.get_run` raises `SchemaVersionError`.
        """
        raise NotImplementedError

    def test_a_corrupt_header_is_listed_as_unreadable_on_exactly_one_page(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def damage(backend: Backend) -> None:
            await self._damage(backend, "r2", None)

        self.drive(request, _unreadable_body(damage, "corrupt", CorruptRunError))

    def test_a_header_from_a_newer_version_is_listed_as_such_on_exactly_one_page(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def damage(backend: Backend) -> None:
            try:
                await self.mark_newer_version(backend, "r2")
            except NotImplementedError:
                pytest.skip(f"{type(self).__name__} defines no mark_newer_version() hook")

        self.drive(request, _unreadable_body(damage, "newer_version", SchemaVersionError))


async def _walk(backend: Backend, limit: int) -> tuple[list[str], list[str], int]:
    """Every page of an unfiltered listing: run ids, unreadable run ids, number of pages."""
    runs: list[str] = []
    unreadable: list[str] = []
    cursor: str | None = None
    for pages in range(1, 100):
        page = await backend.list_runs(limit=limit, cursor=cursor)
        assert len(page.runs) <= limit
        runs += _ids(page.runs)
        unreadable += [u.run_id for u in page.unreadable]
        cursor = page.next_cursor
        if cursor is None:
            return runs, unreadable, pages
    raise AssertionError("list_runs never stopped handing out a next_cursor")


def _unreadable_body(
    damage: Callable[[Backend], Awaitable[None]],
    reason: UnreadableReason,
    error: type[CorruptRunError],
) -> Callable[[Backend], Awaitable[None]]:
    async def body(backend: Backend) -> None:
        for i in range(5):
            stored = header(f"r{i}", session_id="s", created_at=at(i), updated_at=at(i))
            await backend.create_run(stored, [created()])
        await damage(backend)
        with pytest.raises(error, match="'r2'"):
            await backend.get_run("r2")
        readable = ["r4", "r3", "r1", "r0"]
        page = await backend.list_runs()
        assert _ids(page.runs) == readable
        assert [(u.run_id, u.reason) for u in page.unreadable] == [("r2", reason)], (
            "list_runs must report a run it cannot read in RunPage.unreadable"
        )
        assert "'r2'" in page.unreadable[0].message
        # Paged, it is reported exactly once, and limit counts readable runs only.
        for limit in (1, 2, 3):
            runs, unreadable, pages = await _walk(backend, limit)
            assert (runs, unreadable) == (readable, ["r2"]), f"limit={limit}"
            assert pages == -(-len(readable) // limit), f"limit={limit}"
        # No filter ever passes it off as a readable run.
        for filters in (
            {"session_id": "s"},
            {"states": [RunState.PENDING]},
            {"created_after": at(1)},
            {"session_id": "other"},
        ):
            filtered = await backend.list_runs(**filters)
            assert "r2" not in _ids(filtered.runs), filters
            assert {u.run_id for u in filtered.unreadable} <= {"r2"}, filters
        # Its state and age are unknown: a prune of everything keeps it.
        cutoff = utcnow() + timedelta(days=1)
        assert await backend.prune(older_than=cutoff, states=list(RunState)) == len(readable)
        left = await backend.list_runs()
        assert (left.runs, [u.run_id for u in left.unreadable]) == ((), ["r2"])
        assert await backend.delete_run("r2") is True
        assert (await backend.list_runs()).unreadable == ()

    return body
