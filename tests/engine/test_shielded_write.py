"""`shielded_write`: the create's write outlives a cancelled caller, and its outcome is kept."""

from __future__ import annotations

import asyncio

import pytest

from durable_agent._lease import shielded_write


def test_a_cancelled_caller_leaves_the_write_running_to_its_end() -> None:
    async def main() -> None:
        started = asyncio.Event()
        release = asyncio.Event()

        async def write() -> str:
            started.set()
            await release.wait()
            return "landed"

        task, outcome = shielded_write(write())

        async def caller() -> str:
            return await outcome

        waiting = asyncio.ensure_future(caller())
        await started.wait()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert outcome.cancelled()
        assert not task.done()  # the write goes on
        release.set()
        assert await task == "landed"

    asyncio.run(main())


def test_a_failed_write_raises_to_its_caller_and_stays_on_its_task() -> None:
    async def main() -> None:
        async def write() -> None:
            raise KeyError("taken")

        task, outcome = shielded_write(write())
        with pytest.raises(KeyError, match="taken") as raised:
            await outcome
        assert task.done()
        assert task.exception() is raised.value

    asyncio.run(main())


def test_a_write_that_never_suspends_hands_its_result_over() -> None:
    async def main() -> None:
        async def write() -> int:
            return 7

        task, outcome = shielded_write(write())
        assert await outcome == 7
        assert task.result() == 7

    asyncio.run(main())
