"""Conformance tests of the relay of ephemeral messages (`Capability.RELAY`).

What `durable_agent.follow` relies on: a subscription is in force once its
block starts, and then gets the messages published to its run, each whole
and in order, equal ones included, long ones included, and not another run's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from durable_agent.backend import Backend, Capability
from durable_agent.testing._conformance_base import BackendTestCase

__all__ = ["RelayTests"]

_DEADLINE = 60.0


async def _take(messages: AsyncIterator[str], count: int) -> list[str]:
    got: list[str] = []

    async def take() -> None:
        async for message in messages:
            got.append(message)
            if len(got) == count:
                return

    await asyncio.wait_for(take(), _DEADLINE)
    return got


class RelayTests(BackendTestCase):
    """`Backend.publish_ephemeral` reaches `Backend.subscribe_ephemeral`, best effort."""

    required = frozenset({Capability.RELAY})

    def test_messages_published_after_subscribing_arrive_whole_and_in_order(
        self, request: pytest.FixtureRequest
    ) -> None:
        # Equal messages must not be folded into one (PostgreSQL's NOTIFY folds
        # equal payloads of a transaction), and a long one must not be cut.
        long = json.dumps({"kind": "text_delta", "text": "é" * 6000 + "x" * 12000})
        sent = ["one", "one", "two\nthree", long, "", "last"]

        async def body(backend: Backend) -> None:
            subscription = backend.subscribe_ephemeral("r1")
            if subscription is None:
                pytest.skip(f"{backend!r} declares relay but relays nothing here")
            async with subscription as messages:
                for message in sent:
                    await backend.publish_ephemeral("r1", message)
                assert await _take(messages, len(sent)) == sent

        self.drive(request, body)

    def test_a_subscription_gets_only_its_own_runs_messages(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            subscription = backend.subscribe_ephemeral("r1")
            if subscription is None:
                pytest.skip(f"{backend!r} declares relay but relays nothing here")
            async with subscription as messages:
                await backend.publish_ephemeral("r2", "not for r1")
                await backend.publish_ephemeral("r1", "for r1")
                assert await _take(messages, 1) == ["for r1"]

        self.drive(request, body)

    def test_publishing_with_nobody_subscribed_is_not_an_error(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await backend.publish_ephemeral("nobody-listens", "lost, by design")

        self.drive(request, body)
