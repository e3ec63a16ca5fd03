"""The HTTP/1.1 core of the fake provider servers, on asyncio streams alone.

It parses what HTTP clients such as the official SDKs send (a request line,
headers, a ``Content-Length`` or chunked body), keeps connections alive,
records every request, and answers each one as a `Plan` says: a status and a
body, after a delay, or a fault (hold the request unanswered, cut the
connection half-way through the body). The protocol servers in
`durable_agent.testing.fake_servers` decide the plans.

A server runs on the caller's event loop (``async with``) or on a thread of
its own (``with server.running_in_thread():``), for tests whose client runs
synchronously or in a child process.
"""

from __future__ import annotations

import asyncio
import http
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

from durable_agent.records import JSONValue

__all__ = ["HTTPFakeServer", "Plan", "RecordedRequest"]

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)
"""Header values a recorded request never keeps."""

_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request a fake server received, as it arrived (secret headers redacted).

    ``index`` counts requests from 0 in arrival order; ``body`` is the JSON
    object sent (empty when the body was not a JSON object); ``at`` is
    `time.monotonic` at arrival.
    """

    index: int
    method: str
    path: str
    headers: Mapping[str, str]
    body: dict[str, JSONValue]
    text: str
    at: float


@dataclass(slots=True)
class Plan:
    """How to answer one request.

    ``hang`` holds the request unanswered for that many seconds (or until the
    client goes away), then closes the connection; ``drop_after`` sends that
    many bytes of the body, then closes the connection.

    ``chunks`` streams the body instead (chunked transfer encoding, one HTTP
    chunk each, ``chunk_delay`` seconds apart); ``then`` says how the stream
    ends: ``"end"`` properly, ``"cut"`` by closing the connection mid-body,
    ``"hang"`` by holding it open ``hang`` seconds (or until the client leaves).
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: float | None = None
    drop_after: int | None = None
    chunks: list[bytes] | None = None
    chunk_delay: float = 0.0
    then: Literal["end", "cut", "hang"] = "end"


class _BadRequest(Exception):
    pass


@dataclass(slots=True)
class _Incoming:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


class HTTPFakeServer(ABC):
    """A real HTTP server on 127.0.0.1 and an ephemeral port; subclasses plan the answers."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._requests: list[RecordedRequest] = []
        self._arrived = threading.Condition()
        self._stopped: asyncio.Event | None = None

    # -- lifecycle ------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (known once it started)."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running; use 'async with' first")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        """Listen on the running event loop."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._loop = asyncio.get_running_loop()
        # A plain callback, not a coroutine: the connection is known from the moment it is
        # accepted, so `stop` closes it even if its handler is cancelled before its first step
        # (whose ``finally`` then never runs: an unclosed socket, a ResourceWarning at GC).
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, cut every open connection and wait for the handlers."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Until none is left: a connection accepted just before the close may still arrive.
        while self._connections:
            open_now = list(self._connections.items())
            for task, _ in open_now:
                task.cancel()
            await asyncio.gather(*(task for task, _ in open_now), return_exceptions=True)
            for task, writer in open_now:
                self._connections.pop(task, None)
                writer.close()
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @contextmanager
    def running_in_thread(self, *, start_timeout: float = 10.0) -> Iterator[Self]:
        """Serve from a thread with its own event loop for the ``with`` block.

        For tests whose HTTP client is synchronous or lives in a child process.
        """
        ready = threading.Event()
        failures: list[BaseException] = []

        async def serve() -> None:
            self._stopped = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:
                failures.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self._stopped.wait()
            finally:
                await self.stop()

        thread = threading.Thread(
            target=asyncio.run, args=(serve(),), name=f"{type(self).__name__}", daemon=True
        )
        thread.start()
        if not ready.wait(start_timeout):
            raise RuntimeError(f"{type(self).__name__} did not start within {start_timeout} s")
        if failures:
            thread.join()
            raise failures[0]
        try:
            yield self
        finally:
            loop, stopped = self._loop, self._stopped
            if loop is not None and stopped is not None and not loop.is_closed():
                loop.call_soon_threadsafe(stopped.set)
            thread.join(start_timeout)

    # -- requests -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._arrived:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until ``count`` requests have arrived; `TimeoutError` after ``timeout``.

        Call it from another thread than the server's (for a server on the
        caller's loop, ``await`` `wait_for_requests_async` instead).
        """
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(
                    f"{type(self).__name__} saw {len(self._requests)} request(s), "
                    f"not {count}, within {timeout} s"
                )
            return list(self._requests)

    async def wait_for_requests_async(
        self, count: int, *, within: float = 10.0
    ) -> list[RecordedRequest]:
        """`wait_for_requests` without blocking the event loop (`TimeoutError` after ``within``)."""
        return await asyncio.to_thread(self.wait_for_requests, count, within)

    @abstractmethod
    def plan(self, request: RecordedRequest, secret_headers: Mapping[str, str]) -> Plan:
        """Decide the answer to ``request``; ``secret_headers`` holds the redacted values."""

    # -- the wire -------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections[task] = writer

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                incoming = await _read_request(reader)
                if incoming is None:
                    break
                recorded, secrets = self._record(incoming)
                if not await self._answer(self.plan(recorded, secrets), reader, writer):
                    break
                if not incoming.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, _BadRequest):
            pass
        except asyncio.CancelledError:
            # Only `stop()` or the loop's shutdown cancels a handler: it ends quietly.
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()
            with suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    def _record(self, incoming: _Incoming) -> tuple[RecordedRequest, dict[str, str]]:
        secrets = {k: v for k, v in incoming.headers.items() if k in SECRET_HEADERS}
        headers = {k: (REDACTED if k in secrets else v) for k, v in incoming.headers.items()}
        text = incoming.body.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(text) if text else {}
        except ValueError:
            parsed = {}
        body: dict[str, JSONValue] = parsed if isinstance(parsed, dict) else {}
        with self._arrived:
            recorded = RecordedRequest(
                index=len(self._requests),
                method=incoming.method,
                path=incoming.path,
                headers=headers,
                body=body,
                text=text,
                at=time.monotonic(),
            )
            self._requests.append(recorded)
            self._arrived.notify_all()
        return recorded, secrets

    async def _answer(
        self, plan: Plan, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Send the planned answer; False when the connection must close afterwards."""
        if plan.delay > 0:
            await asyncio.sleep(plan.delay)
        if plan.chunks is not None:
            return await self._stream(plan, reader, writer)
        if plan.hang is not None:
            # Hold the request: the client gives up (timeout), dies (EOF), or
            # the hang ends; the connection closes either way.
            with suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(1), plan.hang)
            return False
        try:
            reason = http.HTTPStatus(plan.status).phrase
        except ValueError:
            reason = "Overloaded" if plan.status == 529 else "Unknown"
        headers = {
            "content-type": "application/json",
            **plan.headers,
            "content-length": str(len(plan.body)),
            "connection": "keep-alive",
        }
        head = f"HTTP/1.1 {plan.status} {reason}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        payload = head.encode("latin-1") + b"\r\n"
        if plan.drop_after is not None:
            writer.write(payload + plan.body[: plan.drop_after])
            await writer.drain()
            return False
        writer.write(payload + plan.body)
        await writer.drain()
        return True

    async def _stream(
        self, plan: Plan, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Send ``plan.chunks`` one HTTP chunk each; end as ``plan.then`` says."""
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            **plan.headers,
            "transfer-encoding": "chunked",
            "connection": "keep-alive",
        }
        head = f"HTTP/1.1 {plan.status} OK\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        writer.write(head.encode("latin-1") + b"\r\n")
        for index, chunk in enumerate(plan.chunks or ()):
            if index and plan.chunk_delay > 0:
                await asyncio.sleep(plan.chunk_delay)
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
        if plan.then == "cut":
            return False
        if plan.then == "hang":
            with suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(1), plan.hang or 60.0)
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


async def _read_request(reader: asyncio.StreamReader) -> _Incoming | None:
    """One request from the stream, or None when the client closed it cleanly."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise _BadRequest(f"bad request line {lines[0]!r}") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        length = int(headers.get("content-length", "0") or "0")
        if length > _MAX_BODY:
            raise _BadRequest("body too large")
        body = await reader.readexactly(length) if length else b""
    return _Incoming(method=method.upper(), path=target, headers=headers, body=body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size_total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            # Trailers, if any, end with an empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        size_total += size
        if size_total > _MAX_BODY:
            raise _BadRequest("body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
