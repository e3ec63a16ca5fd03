"""The worker fleet's process tests on PostgreSQL: the same scenarios, the built-in store.

Each test runs one scenario of `tests.workers.test_fleet` against a schema of
its own on the local PostgreSQL (dropped afterwards), where claims are native,
liveness is an advisory lock and wake-ups are LISTEN/NOTIFY.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import postgres_server
from tests.workers import test_fleet as scenarios
from tests.workers.fleet_harness import Fleet


@pytest.fixture
def postgres_fleet(tmp_path: Path) -> Iterator[Fleet]:
    postgres_server.admin("SELECT 1")  # skips (fails under CI) when the server is down
    schema = postgres_server.new_schema()
    fleet = Fleet(tmp_path, f"{postgres_server.URL}?schema={schema}")
    try:
        yield fleet
    finally:
        fleet.stop()
        postgres_server.drop(schema)


def test_submit_wait_and_work_in_three_processes_on_postgres(postgres_fleet: Fleet) -> None:
    scenarios.test_submit_in_one_process_wait_in_another_and_a_worker_in_a_third(postgres_fleet)


def test_a_sigkilled_workers_runs_are_taken_over_on_postgres(postgres_fleet: Fleet) -> None:
    scenarios.test_a_sigkilled_workers_runs_are_taken_over_with_no_effect_recorded_twice(
        postgres_fleet
    )


def test_a_frozen_worker_is_fenced_on_postgres(postgres_fleet: Fleet) -> None:
    scenarios.test_a_frozen_worker_is_taken_over_and_its_late_writes_are_refused(postgres_fleet)


def test_slots_and_max_running_hold_on_postgres(postgres_fleet: Fleet) -> None:
    scenarios.test_slots_and_max_running_are_never_exceeded(postgres_fleet)
