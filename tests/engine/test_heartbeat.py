"""The lease heartbeat: one per event loop, renewing the leases of runs inside a long effect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from durable_agent import Agent, ScriptedModel, Task, ToolCall
from durable_agent import _heartbeat as heartbeat
from durable_agent.backend import LeaseOwner
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.errors import LeaseLostError, RunBusyError, StoreUnavailableError
from durable_agent.records import Lease
from tests._barriers import wait_until_async

TTL = 0.3
"""The lease TTL of the tests that only need renewals to be due (or to fail)."""
HELD_TTL = 1.0
"""The TTL of the tests that check a lease never lapses: room for a slow fsync on a busy machine."""


class CountingStore(SqliteBackend):
    """Counts renewals per run; ``fail_renewals`` makes them raise."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.renewals: dict[str, int] = {}
        self.fail_renewals = False

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        self.renewals[run_id] = self.renewals.get(run_id, 0) + 1
        if self.fail_renewals:
            raise StoreUnavailableError("renewal refused by the test")
        return await super().renew_lease(run_id, lease)


def _agent(
    store: SqliteBackend, tool: Callable[[], Awaitable[str]], *, ttl: float, name: str = "agent"
) -> Agent:
    script: list[str | ToolCall] = [ToolCall(tool.__name__, {}), "done"]
    return Agent(ScriptedModel(script), db=store, tools=[tool], lease_ttl=ttl, name=name)


def test_a_tool_call_longer_than_the_ttl_keeps_its_lease(tmp_path: Path) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow() -> str:
        started.set()
        await finish.wait()
        return "slow"

    async def main() -> None:
        store = CountingStore(tmp_path / "runs.db")
        try:
            agent = _agent(store, slow, ttl=HELD_TTL)
            handle = asyncio.ensure_future(agent.do_async(Task("t"), return_output=True))
            await asyncio.wait_for(started.wait(), 30)
            (run_id,) = [r.run_id for r in (await store.list_runs()).runs]
            # Three TTLs into one tool call: still held, never expired (the store's clock).
            # The sleep below only spaces the samples; nothing waits on it.
            deadline = time.monotonic() + 3 * HELD_TTL
            stranger = LeaseOwner(host="another-host", pid=1)
            while time.monotonic() < deadline:
                header = await store.get_run(run_id)
                assert header.lease is not None
                assert header.lease.expires_at > time.time()
                with pytest.raises(RunBusyError):
                    await store.acquire_lease(run_id, stranger, ttl=HELD_TTL)
                await asyncio.sleep(HELD_TTL / 4)
            assert store.renewals[run_id] >= 3
            finish.set()
            output = await asyncio.wait_for(handle, 30)
            assert output.output == "done"
            assert heartbeat._BEATS == {}, "the loop's beat must go idle with no timer armed"
        finally:
            await store.close()

    asyncio.run(main())


def test_a_failed_renewal_fails_the_run_at_its_next_append(tmp_path: Path) -> None:
    async def slow() -> str:
        # The long effect itself, not a barrier: the heartbeat's timer, due after
        # TTL / 3 on the same loop, fires before this one however busy the machine.
        await asyncio.sleep(TTL)
        return "slow"

    async def main() -> None:
        store = CountingStore(tmp_path / "runs.db")
        store.fail_renewals = True
        try:
            with pytest.raises(StoreUnavailableError, match="renewal refused"):
                await _agent(store, slow, ttl=TTL).do_async(Task("t"))
            assert sum(store.renewals.values()) >= 1
        finally:
            await store.close()

    asyncio.run(main())


def test_a_renewal_that_could_not_reach_the_store_is_asked_again_at_the_next_append(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path / "runs.db")

    async def blip() -> str:
        store.fail_renewals = True  # the store unreachable for the heartbeat only
        await wait_until_async(lambda: sum(store.renewals.values()) >= 1, awaiting="a renewal")
        store.fail_renewals = False  # back before the result is recorded
        return "blip"

    async def main() -> None:
        try:
            output = await _agent(store, blip, ttl=TTL).do_async(Task("t"), return_output=True)
            assert output.output == "done"  # nobody took it: the append went ahead
            (run_id,) = [r.run_id for r in (await store.list_runs()).runs]
            assert store.renewals[run_id] >= 2  # the failed one, then asked again
        finally:
            await store.close()

    asyncio.run(main())


def test_a_run_taken_over_while_its_renewal_could_not_reach_the_store_is_lost(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path / "runs.db")
    stranger = LeaseOwner(host="another-host", pid=1)

    async def cut_off() -> str:
        store.fail_renewals = True
        await wait_until_async(lambda: sum(store.renewals.values()) >= 1, awaiting="a renewal")
        (run_id,) = [r.run_id for r in (await store.list_runs()).runs]
        deadline = time.monotonic() + 30
        while True:  # the lease lapses on the store's clock, then another owner takes it
            try:
                await store.acquire_lease(run_id, stranger, ttl=60)
                break
            except RunBusyError:
                assert time.monotonic() < deadline, "the lease never lapsed"
                await asyncio.sleep(TTL / 4)
        store.fail_renewals = False  # the store answers again
        return "late"

    async def main() -> None:
        try:
            with pytest.raises(LeaseLostError):
                await _agent(store, cut_off, ttl=TTL).do_async(Task("t"))
            (header,) = (await store.list_runs()).runs
            assert header.lease is not None
            assert header.lease.owner == stranger.id  # the stale result was never written
            run = await store.load_run(header.run_id)
            assert not any(getattr(e, "result", None) for e in run.events)
        finally:
            await store.close()

    asyncio.run(main())


def test_runs_with_different_ttls_on_one_loop_are_each_renewed_in_time(tmp_path: Path) -> None:
    release = asyncio.Event()
    running = 0

    async def slow() -> str:
        nonlocal running
        running += 1
        await release.wait()
        return "slow"

    async def main() -> None:
        store = CountingStore(tmp_path / "runs.db")
        try:
            # The long TTL enters its effect first and arms the loop's timer far ahead;
            # the short one must get an earlier timer, not wait for that one.
            long = _agent(store, slow, ttl=60.0, name="long")
            first = asyncio.ensure_future(long.do_async(Task("long"), return_output=True))
            await wait_until_async(lambda: running >= 1, awaiting="the long run's tool call")
            short = _agent(store, slow, ttl=HELD_TTL, name="short")
            second = asyncio.ensure_future(short.do_async(Task("short"), return_output=True))
            await wait_until_async(lambda: running >= 2, awaiting="the short run's tool call")
            runs = {r.agent_name: r.run_id for r in (await store.list_runs()).runs}
            deadline = time.monotonic() + 30
            while store.renewals.get(runs["short"], 0) < 3:
                assert time.monotonic() < deadline, "the short lease was not renewed"
                header = await store.get_run(runs["short"])
                assert header.lease is not None
                assert header.lease.expires_at > time.time()
                await asyncio.sleep(HELD_TTL / 4)  # spaces the samples
            assert store.renewals.get(runs["long"], 0) == 0
            release.set()
            outputs = await asyncio.wait_for(asyncio.gather(first, second), 30)
            assert [o.output for o in outputs] == ["done", "done"]
            assert heartbeat._BEATS == {}
        finally:
            await store.close()

    asyncio.run(main())
