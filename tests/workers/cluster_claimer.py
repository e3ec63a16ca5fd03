"""A child for tests/workers/test_cluster_places.py: one capped claim, then it waits to be killed.

    python -m tests.workers.cluster_claimer DB_URL QUEUE CAP TTL

Claims at most one run of agent ``agent`` from QUEUE with ``max_running={QUEUE: CAP}``
and a lease of TTL seconds, prints ``<run id> <generation> <owner id>`` and
blocks on stdin (no worker registration, no renewal: its lease lapses by its TTL).
"""

from __future__ import annotations

import asyncio
import sys

from durable_agent.backend import LeaseOwner
from durable_agent.registry import open_backend


async def _claim(url: str, queue: str, cap: int, ttl: float) -> None:
    backend = open_backend(url)
    async with backend:
        owner = LeaseOwner.current()
        got = await backend.claim_runs(
            owner, agents=["agent"], queues=[queue], ttl=ttl, max_running={queue: cap}
        )
        for claim in got:
            print(claim.run_id, claim.lease.generation, owner.id, flush=True)
        print("claimed", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until killed


if __name__ == "__main__":
    db, queue, cap, ttl = sys.argv[1:]
    asyncio.run(_claim(db, queue, int(cap), float(ttl)))
