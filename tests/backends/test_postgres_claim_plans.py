"""PostgresBackend's claim read through EXPLAIN ANALYZE: the runs held in flight are not
read when free runs fill a claim, and a capped claim locks no more than it may keep."""

from __future__ import annotations

from typing import Any, cast

from durable_agent.backend import LeaseOwner
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.testing.conformance import created, header
from tests.backends.conftest import run
from tests.backends.postgres_server import pg_schema, postgres_url

__all__ = ["pg_schema", "postgres_url"]


# -- claims: the runs in flight are not read when free runs fill the claim --------------------


def _held_scans(plan: dict[str, Any]) -> list[int]:
    """How many times each scan of ``runs`` under the claim's ``held`` CTE ran."""
    found: list[int] = []

    def walk(node: dict[str, Any], inside: bool) -> None:
        inside = inside or node.get("Subplan Name") == "CTE held"
        if inside and node.get("Relation Name") == "runs":
            found.append(int(node["Actual Loops"]))
        for child in node.get("Plans", []):
            walk(child, inside)

    walk(plan["Plan"], False)
    return found


def _held_and_free(url: str, schema: str, *, free: int, queue: str = "default") -> PostgresBackend:
    """Three runs of ``queue`` held by a live lease of another host (the oldest), then ``free``."""
    elsewhere = LeaseOwner(host="another-host", pid=1)

    async def fill() -> PostgresBackend:
        store = PostgresBackend(url, schema=schema)
        for i in range(3):
            await store.create_run(header(f"held-{i}", queue=queue), [created()])
            await store.acquire_lease(f"held-{i}", elsewhere, ttl=300)
        for i in range(free):
            await store.create_run(header(f"free-{i}", queue=queue), [created()])
        await store.close()
        return store

    return run(fill())


def _explain_claim(
    url: str, store: PostgresBackend, *, limit: int, max_running: dict[str, int], sweep: bool,
    **options: Any,
) -> dict[str, Any]:
    """The plan of one claim by a third host, run (ANALYZE makes the claim)."""
    import psycopg

    from durable_agent.backends import _postgres_claims as claims

    params = claims.claim_params(
        LeaseOwner(host="a-third-host", pid=1), namespace=store._namespace, agents=["agent"],
        queues=None, limit=limit, ttl=30, max_running=max_running, gone=[], **options,
    )
    statement = store._claims.sweep if sweep else store._claims.claim
    with psycopg.connect(url, autocommit=True) as conn:
        (plan,) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params).fetchone()[0]
    return cast(dict[str, Any], plan)


def test_a_claim_that_free_runs_fill_does_not_read_the_runs_held_in_flight(
    postgres_url: str, pg_schema: str
) -> None:
    store = _held_and_free(postgres_url, pg_schema, free=3)

    def explain(*, limit: int, sweep: bool) -> tuple[list[int], int]:
        plan = _explain_claim(postgres_url, store, limit=limit, max_running={}, sweep=sweep)
        return _held_scans(plan), int(plan["Plan"]["Actual Rows"])

    assert explain(limit=1, sweep=False) == ([0], 1)  # free-0, the held index untouched
    # A sweep does not walk the held runs in claim order either: it looks at a
    # window of them (all three here) and at the dead owners' runs (none).
    assert explain(limit=1, sweep=True) == ([0], 1)
    assert explain(limit=5, sweep=False) == ([1], 1)  # free-2 is all that is left: read it


def _cte(plan: dict[str, Any], name: str) -> dict[str, Any]:
    """The node of the claim's CTE ``name``."""
    stack = [plan["Plan"]]
    while stack:
        node = stack.pop()
        if node.get("Subplan Name") == f"CTE {name}":
            return node
        stack.extend(node.get("Plans", []))
    raise AssertionError(f"no CTE {name} in the plan")


def test_a_capped_claim_locks_no_more_than_the_limit_per_queue_and_skips_the_held_runs(
    postgres_url: str, pg_schema: str
) -> None:
    store = _held_and_free(postgres_url, pg_schema, free=5, queue="q")  # q is capped
    plan = _explain_claim(postgres_url, store, limit=1, max_running={"q": 10}, sweep=False)
    assert int(plan["Plan"]["Actual Rows"]) == 1
    # The limit, plus at most the limit for the queue with room (7 places left):
    # not all 7, which the five free runs could not fill, sending the claim to
    # read every held run.
    assert int(_cte(plan, "free")["Actual Rows"]) == 2
    assert _held_scans(plan) == [0]
