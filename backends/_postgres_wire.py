"""The writer's single statements straight on libpq (`psycopg.pq`), without psycopg's cursor.

A lone append is one prepared statement in autocommit, and on this path
psycopg's cursor (query conversion, dumpers, its generators and result
bookkeeping) cost ~100 us of the client's CPU per statement where libpq itself
costs ~10 us: measured on the 2-core test machine, the same prepared append ran
in 305 us through libpq and 380 us through a reused psycopg cursor, and the
benchmark's floor, one raw psycopg INSERT, in 319 us (``synchronous_commit =
off``, medians of 2,000 alternated calls). So the writer sends a statement this
way when it can, and through psycopg otherwise:

* Only a statement whose placeholders are all ``%(name)s`` and whose
  parameters are all ``str`` (without NUL), ``int``, ``float``, ``bool`` or
  None. Anything else (arrays, a merged batch, a simple query with a
  notification) goes through psycopg, as does a statement the server refuses
  to prepare.
* The parameters go as text with their types (``int8``, ``float8``, ``bool``;
  a ``str`` or None as ``unknown``, as psycopg sends them, which the server
  infers from the statement), into a statement prepared once per connection
  and per parameter types, under a name psycopg's own cache never uses. The
  rows come back through psycopg's own loaders (`psycopg.adapt.Transformer`),
  errors as psycopg's own exceptions (`psycopg.errors.error_from_result`), so
  a caller sees what psycopg would have given it.
* The connection's lock (psycopg's, which its cursors take too) is held from
  the send until the result is read, so nothing else uses the connection in
  between.
* A caller cancelled once the statement is sent never cuts it: the server runs
  it to its end anyway, so a task of its own reads the result and then frees
  the connection, and the caller leaves at once. (psycopg would instead ask the
  server to cancel it, from a new connection, while the caller waits.) The
  write may then be stored or not, as when a caller is cancelled while its
  write waits in a batch: the engine reloads the run before it writes again.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from contextlib import suppress
from functools import lru_cache
from itertools import count
from typing import Any, Final

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer
from psycopg.errors import error_from_result

__all__ = ["Plan", "Wire", "plan"]

_OK: Final = frozenset({pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK})
_UNKNOWN: Final = 0
_TYPES: Final = {int: 20, float: 701, bool: 16}  # int8, float8, bool
_INT8: Final = (-(2**63), 2**63 - 1)
"""The ints sent as int8; psycopg sends a larger one as numeric, so it takes those."""
_PLACEHOLDER: Final = re.compile(r"%\((\w+)\)s")
_OTHER_PERCENT: Final = re.compile(r"%(?!\(\w+\)s)")
_NAMES: Final = count()
"""Prepared statement names, unique in the process: a name is never prepared twice."""

_MISSING: Final = object()

_draining: set[asyncio.Task[None]] = set()
"""Strong references to the tasks reading a cancelled caller's result (the loop keeps weak ones)."""


class Plan:
    """One statement with its ``%(name)s`` placeholders turned into ``$1, $2, ...``."""

    __slots__ = ("names", "text")

    def __init__(self, names: tuple[str, ...], text: bytes) -> None:
        self.names = names
        """The parameters' names, in the order of their numbers."""
        self.text = text


@lru_cache(maxsize=256)
def plan(query: str) -> Plan | None:
    """The statement as libpq takes it, or None when it has other placeholders (``%b``, ``%%``)."""
    if _OTHER_PERCENT.search(_PLACEHOLDER.sub("", query)):
        return None
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = _PLACEHOLDER.sub(number, query).encode()
    return Plan(tuple(names), text)


class Wire:
    """One connection's statements prepared for the wire path, and the way to run them."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self._encoding = conn.info.encoding
        self._prepared: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
        self._refused: set[tuple[bytes, tuple[int, ...]]] = set()
        self._loader = Transformer(conn)

    def encode(
        self, plan: Plan, params: Mapping[str, object]
    ) -> tuple[list[bytes | None], tuple[int, ...]] | None:
        """The parameters as libpq takes them, and their types; None when one is not a scalar."""
        values: list[bytes | None] = []
        types: list[int] = []
        add, typed = values.append, types.append
        utf8 = self._encoding == "utf-8"
        for name in plan.names:
            value = params.get(name, _MISSING)  # a missing one: psycopg says so
            kind = type(value)
            if kind is str:
                if "\x00" in value:  # type: ignore[operator]
                    return None  # psycopg refuses it, with its own error
                try:
                    add(value.encode() if utf8 else value.encode(self._encoding))  # type: ignore[attr-defined]
                except UnicodeEncodeError:
                    return None  # a lone surrogate: psycopg raises its own error
                typed(_UNKNOWN)
            elif value is None:
                add(None)
                typed(_UNKNOWN)
            elif kind is float or (kind is int and _INT8[0] <= value <= _INT8[1]):  # type: ignore[operator]
                add(repr(value).encode())
                typed(_TYPES[kind])
            elif kind is bool:
                add(b"t" if value else b"f")
                typed(16)
            else:
                return None
        key = tuple(types)
        return None if (plan.text, key) in self._refused else (values, key)

    async def run(
        self, plan: Plan, values: list[bytes | None], types: tuple[int, ...]
    ) -> list[tuple[Any, ...]] | None:
        """Run the statement in autocommit; its rows, or None if the server would not prepare it.

        Raises psycopg's exception for an error the server reports, and
        `psycopg.OperationalError` when the connection fails.
        """
        conn = self.conn
        lock = conn.lock
        await lock.acquire()
        handed_over = False
        try:
            key = (plan.text, types)
            name = self._prepared.get(key)
            if name is None:
                name = f"durable_agent_{next(_NAMES)}".encode()
                conn.pgconn.send_prepare(name, plan.text, param_types=types)
                try:
                    prepared = await _result(conn.pgconn)
                except asyncio.CancelledError:
                    _hand_over(conn, lock)
                    handed_over = True
                    raise
                if prepared.status != pq.ExecStatus.COMMAND_OK:
                    if conn.broken:
                        raise error_from_result(prepared, encoding=self._encoding)
                    self._refused.add(key)  # psycopg's path says what is wrong with it
                    return None
                self._prepared[key] = name
            conn.pgconn.send_query_prepared(name, values)
            try:
                result = await _result(conn.pgconn)
            except asyncio.CancelledError:
                _hand_over(conn, lock)
                handed_over = True
                raise
            if result.status not in _OK:
                raise error_from_result(result, encoding=self._encoding)
            if result.status != pq.ExecStatus.TUPLES_OK:
                return []
            self._loader.set_pgresult(result)
            rows: list[tuple[Any, ...]] = self._loader.load_rows(0, result.ntuples, tuple)
            return rows
        finally:
            if not handed_over:
                lock.release()


async def _result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
    """The one result of the statement just sent, once it has all arrived (the rest read)."""
    loop = asyncio.get_running_loop()
    fd = pgconn.socket
    while pgconn.flush():  # the socket's buffer was full: wait until it takes the rest
        await _ready(loop, fd, write=True)
        pgconn.consume_input()
    pgconn.consume_input()
    while pgconn.is_busy():
        await _ready(loop, fd, write=False)
        pgconn.consume_input()
    result = pgconn.get_result()
    if result is None:
        raise psycopg.OperationalError("the server sent no result")
    while pgconn.get_result() is not None:  # a single statement has no other
        pass
    return result


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _hand_over(conn: psycopg.AsyncConnection[Any], lock: asyncio.Lock) -> None:
    """Leave the statement in flight to a task that reads its result, then frees the lock."""
    task = asyncio.get_running_loop().create_task(_drain(conn.pgconn, lock))
    _draining.add(task)
    task.add_done_callback(_draining.discard)


async def _drain(pgconn: pq.abc.PGconn, lock: asyncio.Lock) -> None:
    try:
        with suppress(Exception):  # a broken connection: its next user finds it broken
            await _result(pgconn)
    finally:
        lock.release()
