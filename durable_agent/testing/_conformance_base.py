"""The harness of the conformance suite: run a test body against a fresh store, one loop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from durable_agent.backend import Backend, Capability, LeaseOwner
from durable_agent.fsm import RunState
from durable_agent.records import (
    CreatedEvent,
    Lease,
    RunHeader,
    TransitionEvent,
    UserMessage,
)

Body = Callable[[Backend], Awaitable[None]]


# -- building runs ----------------------------------------------------------------------


def header(run_id: str, **fields: Any) -> RunHeader:
    """A header of a run whose log holds only its CreatedEvent (seq 1, PENDING by default)."""
    return RunHeader.model_validate({"run_id": run_id, "seq": 1, **fields})


def created(content: str = "hi") -> CreatedEvent:
    """The first event of a run: one user message."""
    return CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content=content),))


def step(seq: int, state: RunState = RunState.MODEL_CALL) -> TransitionEvent:
    """A payload-free event with ``seq`` that moves the run to ``state``."""
    return TransitionEvent(seq=seq, state=state, trigger="start")


async def new_run(backend: Backend, run_id: str, **fields: Any) -> Lease:
    """Create a run (seq 1) and take its lease for 30 s."""
    await backend.create_run(header(run_id, **fields), [created()])
    return await backend.acquire_lease(run_id, LeaseOwner.current(), ttl=30)


def at(second: int) -> datetime:
    """A fixed, aware creation time: ``second`` seconds after 2024-01-01 UTC."""
    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=second)


def _ids(headers: Sequence[RunHeader]) -> list[str]:
    return [h.run_id for h in headers]


# -- the harness ------------------------------------------------------------------------------


class BackendTestCase:
    """Runs each test body against a fresh store from ``backend``, on one event loop."""

    required: ClassVar[frozenset[Capability]] = frozenset()
    """Capabilities every test of this group needs (missing: skipped)."""

    def backend(self) -> AsyncIterator[Backend]:
        """Yield one fresh, empty store, then clean it up: override this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define `async def backend(self, ...)` yielding a "
            "fresh Backend (see durable_agent.testing.conformance)"
        )

    async def reopen(self, store: Backend) -> Backend:
        """Optional: a second store object over ``store``'s storage (the caller closes it)."""
        raise NotImplementedError

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        """Optional: overwrite event ``seq`` (or the header if None) with an invalid record."""
        raise NotImplementedError

    # -- driving --------------------------------------------------------------------

    def drive(
        self,
        request: pytest.FixtureRequest,
        body: Body,
        *,
        needs: frozenset[Capability] = frozenset(),
    ) -> None:
        """Set up a store, run ``body(store)`` and clean up, all in one ``asyncio.run``."""
        factory = self.backend
        if not inspect.isasyncgenfunction(factory):
            raise TypeError(
                f"{type(self).__name__}.backend must be an async generator method "
                "(`async def backend(self, ...)` with one `yield store`)"
            )
        names = list(inspect.signature(factory).parameters)
        arguments = {name: request.getfixturevalue(name) for name in names}
        asyncio.run(self._drive(factory(**arguments), body, self._required(request) | needs))

    def _required(self, request: pytest.FixtureRequest) -> frozenset[Capability]:
        """The ``required`` of the group that defines the running test, not of the whole class.

        The combined suite inherits every group, so ``self.required`` would be
        whichever group comes first in the MRO, and would skip every other
        group's tests on a store without that capability.
        """
        name = request.function.__name__
        for group in type(self).__mro__:
            if name in vars(group):
                found = vars(group).get("required")
                if isinstance(found, frozenset):
                    return found
                return frozenset()
        return self.required

    async def _drive(
        self, fixture: AsyncIterator[Backend], body: Body, needs: frozenset[Capability]
    ) -> None:
        store = await anext(fixture)
        try:
            if not isinstance(store, Backend):
                raise TypeError(f"backend() yielded {store!r}, not a Backend")
            missing = needs - store.capabilities
            if missing:
                names = ", ".join(sorted(c.value for c in missing))
                pytest.skip(f"{type(store).__name__} does not declare capability {names}")
            await body(store)
        finally:
            try:
                await anext(fixture)
            except StopAsyncIteration:
                pass
            else:
                raise TypeError("backend() must yield exactly once")

    async def _reopened(self, store: Backend) -> Backend:
        try:
            return await self.reopen(store)
        except NotImplementedError:
            pytest.skip(f"{type(self).__name__} defines no reopen() hook")

    async def _damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        try:
            await self.damage(store, run_id, seq)
        except NotImplementedError:
            pytest.skip(f"{type(self).__name__} defines no damage() hook")
