"""One connection ("link") per event loop, as the SQLite and PostgreSQL backends hold theirs.

A link belongs to the loop it was opened on (its writer task and its sockets
do): a backend used from another loop, or whose link broke, opens a new one
under a per-loop lock, so two callers on one loop never open two, and drops
the old one (shut down on its own loop, abandoned from another). `close`
waits for a connect in progress on its loop before it takes the link away.

The backends' hot paths (an append) read ``_link`` themselves and call
`LoopLinks._reconnect` only when it is not usable, so nothing here costs an
append a call.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from typing import Generic, Protocol, TypeVar

from durable_agent.errors import StoreUnavailableError

__all__ = ["LoopLinks"]


class _Link(Protocol):
    @property
    def usable(self) -> bool: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    async def shutdown(self) -> None: ...


L = TypeVar("L", bound=_Link)


class LoopLinks(Generic[L]):
    """A backend's link per event loop (mixed into the backend; see the module docstring)."""

    _link: L | None
    _lock: asyncio.Lock | None
    _lock_loop: asyncio.AbstractEventLoop | None
    _closed: bool

    def _init_links(self) -> None:
        """No link yet, open: called by the backend's ``__init__``."""
        self._link = None
        self._lock = None
        self._lock_loop = None
        self._closed = False

    @abstractmethod
    async def _open_link(self, loop: asyncio.AbstractEventLoop) -> L:
        """A new link on ``loop`` (the running loop); raises `StoreUnavailableError`."""

    @abstractmethod
    async def _drop_link(self, link: L, loop: asyncio.AbstractEventLoop) -> None:
        """Let ``link`` go: shut down if it is on ``loop`` (the running loop), else abandoned."""

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")

    async def _connected(self) -> L:
        link = self._link
        if link is not None and link.usable and link.loop is asyncio.get_running_loop():
            return link
        return await self._reconnect()

    async def _reconnect(self) -> L:
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            link = self._link
            if link is not None and link.usable and link.loop is loop:
                return link
            self._link = None
            if link is not None:  # left by an earlier event loop, or it broke
                await self._drop_link(link, loop)
            link = await self._open_link(loop)
            if self._closed:  # close() ran while this connected
                await link.shutdown()
                raise StoreUnavailableError(f"{self!r} is closed")
            self._link = link
            return link

    async def _close_links(self) -> L | None:
        """Mark the backend closed and take its link, already dropped; None when already closed.

        Returns the link it dropped, if any, for the backend's own last checks.
        """
        if self._closed:
            return None
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._lock is not None and self._lock_loop is loop:
            async with self._lock:  # let a connect in progress finish first
                pass
        link, self._link = self._link, None
        if link is not None:
            await self._drop_link(link, loop)
        return link
