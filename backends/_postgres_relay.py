"""`PostgresBackend`'s relay of ephemeral messages (token deltas) over LISTEN/NOTIFY.

Best effort by design, like Redis pub/sub: a follower sees only what is sent
while it listens; every stored event still reaches it through the log.

* **One channel per run**: ``durable_agent_relay_<hash of schema and run id>``
  (a channel name is an identifier of at most 63 bytes, a run id may be longer).
* **Sent apart from the durable writes.** The messages go through a connection
  of their own with ``synchronous_commit = off``, never in the group-commit
  transaction: a commit that notifies takes a lock all notifying commits of the
  server share, and holding it through the WAL flush of a batch of appends
  would serialize every process's commits. Messages queued while one is being
  sent go together in the next statement (one transaction, delivered in order).
* **Under PostgreSQL's 8000-byte payload limit.** A message is cut into
  payloads of at most `BUDGET` bytes, after a newline where it can (never
  inside a character); each payload starts with a header line, a serial (so
  two equal payloads of one transaction are not folded into one, as NOTIFY
  does) and ``+`` when the next payload continues the message. All of a message's payloads
  are one transaction's, so a listener gets all of them, in order, or none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql

from durable_agent.errors import StoreUnavailableError

if TYPE_CHECKING:
    from durable_agent.backends._postgres_link import Link, Settings

__all__ = ["BUDGET", "Publisher", "Relaying", "channel", "join", "payloads", "subscription"]

BUDGET: Final = 7900
"""Most bytes of one payload, header included (PostgreSQL refuses 8000 and more)."""

_SEND: Final = (
    "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(c, p, n) "
    "ORDER BY n"
)

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


def channel(schema: str, run_id: str) -> str:
    """The NOTIFY channel of one run's relay in ``schema``."""
    digest = hashlib.blake2b(f"{schema}\0{run_id}".encode(), digest_size=16).hexdigest()
    return f"durable_agent_relay_{digest}"


def payloads(message: str, serial: Callable[[], int]) -> list[str]:
    """``message`` as NOTIFY payloads of at most `BUDGET` bytes each (see the module doc)."""
    room = BUDGET - 12  # a header line: a serial of up to 10 digits, "+" and "\n"
    pieces = _cut(message, room)
    return [
        f"{serial() % 10**10}{'+' if index + 1 < len(pieces) else ''}\n{piece}"
        for index, piece in enumerate(pieces)
    ]


def _cut(text: str, room: int) -> list[str]:
    """``text`` in pieces of at most ``room`` bytes of UTF-8, after a newline where one is."""
    if len(text.encode()) <= room:
        return [text]
    pieces: list[str] = []
    start = 0
    ascii_only = text.isascii()  # what `relay_message` sends: JSON, non-ASCII escaped
    while start < len(text):
        if ascii_only:
            end = min(start + room, len(text))
        else:  # never inside a character
            end, used = start, 0
            while end < len(text) and used + len(text[end].encode()) <= room:
                used += len(text[end].encode())
                end += 1
        if end < len(text):
            newline = text.rfind("\n", start, end)
            if newline > start:
                end = newline + 1  # whole lines per payload, when they fit
        pieces.append(text[start:end])
        start = end
    return pieces


class _Joiner:
    """Puts a message cut into several payloads back together (`payloads`' inverse)."""

    def __init__(self) -> None:
        self.partial: list[str] = []

    def feed(self, payload: str) -> str | None:
        head, newline, body = payload.partition("\n")
        if not newline or not head.rstrip("+").isdigit():
            self.partial.clear()
            return payload  # not one of ours: passed on as it is
        if head.endswith("+"):
            self.partial.append(body)
            return None
        whole = "".join(self.partial) + body
        self.partial.clear()
        return whole


def join(parts: list[str]) -> list[str]:
    """The messages ``parts`` (payloads in the order received) carry."""
    joiner = _Joiner()
    return [m for m in (joiner.feed(p) for p in parts) if m is not None]


class Publisher:
    """One event loop's relay connection: sends the queued messages, one statement a batch."""

    def __init__(self, connect: Connect, where: str) -> None:
        self._connect = connect
        self._where = where
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self._pending: list[tuple[str, str]] = []
        self._lock = asyncio.Lock()
        self._serial = 0

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    async def publish(self, channel: str, message: str) -> None:
        """Send ``message`` to ``channel``'s listeners; `StoreUnavailableError` if it fails.

        A message queued while another batch is sent goes with the next one,
        so concurrent streams of one process share statements.
        """
        self._pending.extend((channel, payload) for payload in payloads(message, self._next))
        async with self._lock:
            if not self._pending:
                return  # the batch before took it along
            batch, self._pending = self._pending, []
            try:
                conn = await self._connection()
                await conn.execute(_SEND, ([c for c, _ in batch], [p for _, p in batch]))
            except psycopg.Error as exc:
                await self.close()
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise StoreUnavailableError(
                    f"PostgreSQL store {self._where}: relaying failed ({first}); the "
                    "messages were dropped (followers still read every stored event)"
                ) from exc

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = await self._connect()
            # Nothing durable is written here: no WAL flush to wait for.
            await self.conn.execute("SET synchronous_commit = off")
        return self.conn

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            with suppress(Exception):
                await conn.close()

    def abandon(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()


class _Subscription:
    """A LISTEN connection of one follower's own, reconnected when it is lost."""

    def __init__(self, connect: Connect, channel: str) -> None:
        self._connect = connect
        self._channel = channel
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.reconnects = 0

    async def listen(self) -> None:
        """Connect and LISTEN; when this returns, every later message reaches `messages`."""
        conn = await self._connect()
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except BaseException:
            with suppress(Exception):
                await conn.close()
            raise
        self.conn = conn

    async def messages(self) -> AsyncIterator[str]:
        pause = 0.1
        joiner = _Joiner()
        while True:
            conn = self.conn
            if conn is None:
                # Lost (or never had): the follower polls meanwhile, and what was
                # sent in between is gone, as for a follower that came late.
                try:
                    await self.listen()
                except (psycopg.Error, StoreUnavailableError):
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
                    continue
                self.reconnects += 1
                pause = 0.1
                joiner = _Joiner()
                continue
            try:
                async for note in conn.notifies():
                    message = joiner.feed(note.payload)
                    if message is not None:
                        yield message
            except psycopg.Error:
                pass
            await self.close()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            with suppress(Exception):
                await conn.close()


@asynccontextmanager
async def subscription(connect: Connect, channel: str) -> AsyncIterator[AsyncIterator[str]]:
    """LISTEN on ``channel`` for the block (in force before it starts); yield its messages.

    A server that cannot be reached now is not an error: the iterator keeps
    trying, and the follower polls the log until it is back.
    """
    sub = _Subscription(connect, channel)
    with suppress(psycopg.Error, StoreUnavailableError):
        await sub.listen()
    try:
        yield sub.messages()
    finally:
        await sub.close()


class Relaying:
    """`PostgresBackend`'s relay methods (LISTEN/NOTIFY on a channel per run), as a mixin."""

    schema: str
    _settings: Settings

    if TYPE_CHECKING:

        async def _connected(self) -> Link: ...

        def _check_open(self) -> None: ...

    async def publish_ephemeral(self, run_id: str, message: str) -> None:
        """NOTIFY ``message`` on the run's relay channel, cut under the payload limit."""
        link = await self._connected()
        await link.relay.publish(channel(self.schema, run_id), message)

    def subscribe_ephemeral(
        self, run_id: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[str]]:
        """LISTEN on the run's relay channel, on a connection of the subscription's own.

        The LISTEN is in force when the block starts, so a follower that reads
        the log after entering misses no message sent after its read. A lost
        connection is reconnected with backoff (what was sent meanwhile is
        lost; the follower polls the log behind it).
        """
        from durable_agent.backends._postgres_link import connect

        self._check_open()
        settings = self._settings
        return subscription(lambda: connect(settings), channel(self.schema, run_id))
