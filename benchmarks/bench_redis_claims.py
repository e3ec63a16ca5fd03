"""(k) Redis claim latency with many runs not at rest: one script over the claim indexes.

A claim on a single Redis is one Lua script over indexes of the claimable runs
(`durable_agent.backends._redis_claims`): its cost must not grow with the
runs other workers hold. Measured: ``HELD`` runs in MODEL_CALL with a live
lease (other workers' work in progress) plus a backlog of PENDING runs; then
one claim of one run at a time, p50 and p99 over 200 claims, on a private
``redis-server`` (no persistence: the claim's own cost, not the disk's).
Before these indexes, a claim listed every run not at rest (about 0.9 s per
claim with 2,000 held runs on the 2-core development machine).

Run alone: ``python benchmarks/bench_redis_claims.py [--quick] [--dir DISK]``.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from _common import Row, gated, info, run_script, scratch_dir
from _redis_servers import redis_server

from durable_agent.backend import LeaseOwner
from durable_agent.backends.redis import RedisBackend
from durable_agent.fsm import RunState
from durable_agent.records import (
    CreatedEvent,
    Event,
    RunHeader,
    TransitionEvent,
    UserMessage,
    utcnow,
)

NAME = "k redis claims"
LIMIT_P99_MS = 10.0


def _header(run_id: str, state: RunState, seq: int) -> RunHeader:
    now = utcnow()
    return RunHeader(run_id=run_id, agent_name="agent", state=state, seq=seq,
                     created_at=now, updated_at=now)


def _events(state: RunState) -> list[Event]:
    first = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="go"),))
    if state is RunState.PENDING:
        return [first]
    return [first, TransitionEvent(seq=2, state=state, trigger="start")]


async def _measure(url: str, held: int, claims: int) -> list[Row]:
    store = RedisBackend(url, prefix=f"bench-{uuid.uuid4().hex[:8]}:")
    holder = LeaseOwner.current()
    gate = asyncio.Semaphore(50)

    async def busy(i: int) -> None:
        async with gate:
            run_id = f"held-{i}"
            await store.create_run(_header(run_id, RunState.MODEL_CALL, 2),
                                   _events(RunState.MODEL_CALL))
            await store.acquire_lease(run_id, holder, ttl=3600)

    async def pending(i: int) -> None:
        async with gate:
            await store.create_run(_header(f"new-{i}", RunState.PENDING, 1),
                                   _events(RunState.PENDING))

    await asyncio.gather(*(busy(i) for i in range(held)))
    await asyncio.gather(*(pending(i) for i in range(claims + 1)))
    await store.claim_runs(LeaseOwner.current(), agents=["agent"])  # warm: scripts loaded
    costs: list[float] = []
    worker = LeaseOwner.current()  # one worker claiming, run after run
    for _ in range(claims):
        started = time.perf_counter()
        got = await store.claim_runs(worker, agents=["agent"])
        costs.append(time.perf_counter() - started)
        assert len(got) == 1
    await store.close()
    costs.sort()
    p50, p99 = costs[len(costs) // 2] * 1e3, costs[int(len(costs) * 0.99) - 1] * 1e3
    return [
        info(NAME, f"claim p50 with {held:,} held runs", f"{p50:.2f} ms"),
        gated(NAME, f"claim p99 with {held:,} held runs", p99, " ms", LIMIT_P99_MS, ".2f"),
    ]


def run(quick: bool) -> list[Row]:
    with scratch_dir() as folder, redis_server(folder) as url:
        if url is None:
            return [info(NAME, "skipped", "no redis-server on PATH")]
        rows: list[Row] = []
        for held in (200, 2_000) if quick else (1_000, 10_000):
            rows += asyncio.run(_measure(url, held, 200))
        return rows


def main() -> None:
    run_script(__doc__ or NAME, run)


if __name__ == "__main__":
    main()
