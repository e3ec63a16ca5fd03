"""The crash tests of tests/crash/, run again on a Redis Cluster of three masters.

The tests and their ``baseline`` fixture are imported from there and collected
here once more; only ``store_url`` differs: each case gets a store of its own
on the cluster (a ``redis+cluster://`` URL with a fresh prefix), which the
child processes open with `open_backend`. SIGKILL after every durable write,
inside a tool call and a model call (every one of them is killed on SQLite, see
tests/crash/test_crash.py), and two processes racing to continue a dead run
(tests/crash/test_crash_race.py): the same checks as on the other stores.
"""

from __future__ import annotations

import uuid

import pytest

from tests.backends.redis_cluster import redis_cluster_url  # noqa: F401  (a fixture)
from tests.crash.processes import StoreUrl
from tests.crash.test_crash import (  # noqa: F401  (collected here again)
    baseline,
    test_a_run_killed_after_any_durable_write_resumes_in_a_new_process_to_the_same_end,
    test_a_run_killed_after_its_final_write_has_no_lease_left_once_continued,
    test_a_run_killed_inside_any_model_call_repeats_only_that_request,
    test_a_run_killed_inside_any_tool_call_reruns_only_calls_without_a_result,
    test_the_uninterrupted_run_makes_every_effect_once_in_numbered_writes,
)
from tests.crash.test_crash_race import (  # noqa: F401  (collected here again)
    test_two_processes_continuing_one_dead_run_at_once_let_exactly_one_proceed,
)

pytest.importorskip("redis", reason="the redis package is not installed")


@pytest.fixture(scope="module")
def store_url(redis_cluster_url: str) -> StoreUrl:  # noqa: F811
    """One shared cluster; each case gets keys of its own."""
    return lambda where: f"{redis_cluster_url}?prefix=crash-{uuid.uuid4().hex[:12]}:"
