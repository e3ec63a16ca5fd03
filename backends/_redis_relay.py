"""`RedisBackend`'s relay of ephemeral messages (token deltas) over Redis pub/sub.

Best effort by design: pub/sub keeps nothing, so a follower sees only what is
published while it is subscribed; every stored event still reaches it through
the log. One channel per run, ``<prefix>{<run_id>}:relay`` (the run's hash
tag). On Redis Cluster the relay is off (a no-op): followers poll.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["messages", "publish"]


async def publish(client: Any, channel: str, message: str) -> None:
    """PUBLISH ``message`` on ``channel``; errors are the caller's to drop."""
    await client.publish(channel, message)


@contextlib.asynccontextmanager
async def messages(client: Any, channel: str) -> AsyncIterator[AsyncIterator[str]]:
    """Subscribe to ``channel`` for the block; yield an iterator of its messages."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    try:
        yield _listen(pubsub)
    finally:
        with contextlib.suppress(Exception):
            await pubsub.unsubscribe(channel)
        with contextlib.suppress(Exception):
            await pubsub.aclose()


async def _listen(pubsub: Any) -> AsyncIterator[str]:
    async for message in pubsub.listen():
        if message.get("type") != "message":
            continue
        data = message.get("data")
        yield data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
