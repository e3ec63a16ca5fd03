"""Conformance tests of `Backend.migrate`, for backends that declare `Capability.MIGRATE`."""

from __future__ import annotations

import pytest

from durable_agent.backend import Backend, Capability
from durable_agent.fsm import RunState
from durable_agent.records import StoredRun
from durable_agent.testing._conformance_base import BackendTestCase, new_run, step


class MigrationTests(BackendTestCase):
    """migrate: idempotent, and it leaves current runs, their seq and their lease as they are."""

    def test_migrate_leaves_a_current_store_as_it_is_and_can_run_again(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            lease = await backend.append("r1", [step(2)], expected_seq=1, lease=lease)
            before: StoredRun = await backend.load_run("r1")
            dry = await backend.migrate(dry_run=True)
            assert dry.dry_run
            assert dry.runs_rewritten == 0
            for _ in range(2):
                report = await backend.migrate()
                assert report.runs_rewritten == 0
                assert report.steps, "a report says what it did, even when it did nothing"
            assert await backend.load_run("r1") == before
            # The writer holding the lease goes on as if nothing happened.
            await backend.append(
                "r1", [step(3, RunState.TOOL_EXEC)], expected_seq=2, lease=lease
            )
            assert (await backend.get_run("r1")).seq == 3

        # Per test, not the class's `required`: in a suite that mixes every group, a class
        # attribute would be every group's requirement (the first in the MRO wins).
        self.drive(request, body, needs=frozenset({Capability.MIGRATE}))
