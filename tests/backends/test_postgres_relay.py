"""PostgresBackend's relay over LISTEN/NOTIFY: payloads under the limit, reconnects, follow.

The relay contract itself (order, equal and long messages, one run's channel)
is the conformance suite's `RelayTests`; these are what is PostgreSQL's own.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import psycopg
import pytest

from durable_agent import Agent, ScriptedModel, Task, follow
from durable_agent.backends import _postgres_relay as relay
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.records import ModelResponseEvent
from durable_agent.streaming import TextDelta
from tests.backends.postgres_server import pg_schema, postgres_url

__all__ = ["pg_schema", "postgres_url"]


@pytest.mark.parametrize(
    "message",
    [
        "",
        "one line",
        "a\nb\n\nc",
        "x" * relay.BUDGET * 3,
        "é" * relay.BUDGET,  # two bytes a character: cut between characters, never inside
        "\n".join(json.dumps({"kind": "text_delta", "text": "t" * n}) for n in range(0, 9000, 7)),
        "🙂" * 5000 + "\n" + "y" * 20000,
    ],
)
def test_a_message_travels_in_payloads_under_the_notify_limit_and_joins_back(
    message: str,
) -> None:
    counter = itertools.count(1)
    parts = relay.payloads(message, lambda: next(counter))
    assert all(len(p.encode()) <= relay.BUDGET < 8000 for p in parts)
    assert len(set(parts)) == len(parts), "equal payloads of one transaction would be folded"
    assert relay.join(parts) == [message]


def test_messages_sent_in_one_batch_join_back_one_by_one() -> None:
    counter = itertools.count(1)
    sent = ["a" * 20000, "b", "b", "c" * 8000]
    parts = [p for m in sent for p in relay.payloads(m, lambda: next(counter))]
    assert relay.join(parts) == sent


def test_a_subscription_whose_connection_is_killed_listens_again(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            channel = relay.channel(pg_schema, "r1")
            subscription = store.subscribe_ephemeral("r1")
            async with subscription as messages:
                # The server drops the follower's LISTEN session, as a restart would.
                with psycopg.connect(postgres_url, autocommit=True) as admin:
                    killed = admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE query = %s", (f'LISTEN "{channel}"',),
                    ).fetchall()
                assert killed == [(True,)]
                got: list[str] = []

                async def take() -> None:
                    async for message in messages:
                        got.append(message)
                        if message == "after":
                            return

                taking = asyncio.ensure_future(take())
                # What is sent while it reconnects is lost (best effort), so send
                # until something arrives: the wait is for a signal, with a deadline.
                async with asyncio.timeout(60):
                    while not taking.done():
                        await store.publish_ephemeral("r1", "after")
                        await asyncio.wait([taking], timeout=0.05)
                await taking
                assert got[-1] == "after"

    asyncio.run(main())


def test_follow_on_postgres_gets_the_streamed_answers_deltas(
    postgres_url: str, pg_schema: str
) -> None:
    answer = "Relayed over NOTIFY, one delta at a time, then stored whole."

    async def main() -> None:
        async with (
            PostgresBackend(postgres_url, schema=pg_schema) as runner,
            PostgresBackend(postgres_url, schema=pg_schema) as watcher,
        ):
            model = ScriptedModel([answer], chunk_size=4, chunk_delay=0.002)
            async with Agent(model, db=runner) as agent:
                await agent.submit_async(Task("hello", run_id="r1"))
                seen: list[object] = []
                first = asyncio.Event()
                following = asyncio.ensure_future(_collect(watcher, seen, first))
                # follow LISTENs before its first read: once it yielded the
                # stored start, every later delta reaches it.
                await asyncio.wait_for(first.wait(), 60)
                await agent.continue_stream_async(run_id="r1").until_done()
                await asyncio.wait_for(following, 60)
                stored = await runner.load_run("r1")
        deltas = [e for e in seen if isinstance(e, TextDelta)]
        assert all(d.ephemeral for d in deltas)
        final = [e for e in stored.events if isinstance(e, ModelResponseEvent)][-1]
        assert "".join(d.text for d in deltas) == final.message.content == answer

    asyncio.run(main())


async def _collect(store: PostgresBackend, into: list[object], first: asyncio.Event) -> None:
    async for event in follow(store, "r1", poll=0.5, max_poll=5.0):
        into.append(event)
        first.set()
