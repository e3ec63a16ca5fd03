"""How `RedisBackend` lists runs: index scans merged newest first, headers read in batches.

Each index is a sorted set of run ids scored by ``created_at``; a listing
scans the most selective index (by session, user or state, else by creation
time), newest first, in batches that start at the last entry's score, so
entries added or removed meanwhile never make a scan skip one. The headers of
the runs met are read a batch per round trip (one per node on a cluster) and
every filter is checked on the header itself, so an index entry that lags
behind never shows a run where it is not. A run whose header cannot be read is
reported in the page's ``unreadable``, at its index entry's place, never
hidden. Entries of runs that are gone (expired by ``retention``) are dropped
as they are met; on a cluster, entries that disagree with the header are
mended (`durable_agent.backends._redis_cluster`).

``prune`` finds its candidates the same way (`Listing.prunable`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, cast

from redis.exceptions import ResponseError

from durable_agent.backend import Position, RunPage, UnreadableRun, decode_cursor, make_page
from durable_agent.backends import _redis_records as rec
from durable_agent.backends import _redis_scripts as lua
from durable_agent.backends._redis_link import UNAVAILABLE, Connection
from durable_agent.errors import ConfigurationError, CorruptRunError
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader

if TYPE_CHECKING:
    from durable_agent.backends.redis import RedisBackend

__all__ = ["BATCH", "Listing"]

BATCH: Final = 200
"""Index entries read (and headers fetched in one pipeline) per round trip when listing."""


class Listing:
    """`RedisBackend.list_runs`, and the index scans and header reads ``prune`` shares.

    Scripts go through the backend's ``_eval``, like every other call, so a
    listing's writes (dropping an expired run's entries) are no different.
    """

    def __init__(self, backend: RedisBackend, conn: Connection) -> None:
        self.backend = backend
        self.conn = conn

    async def page(
        self,
        *,
        session_id: str | None,
        user_id: str | None,
        states: Collection[RunState] | None,
        created_after: datetime | None,
        created_before: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> RunPage:
        """One page of `RedisBackend.list_runs`."""
        backend = self.backend
        backend._client()
        if limit < 1:
            raise ConfigurationError(f"list_runs(limit={limit}) must be at least 1")
        after = decode_cursor(cursor) if cursor else None
        wanted = {RunState(s) for s in states} if states is not None else None
        if wanted is not None and not wanted:
            return RunPage(runs=(), next_cursor=None)
        # The most selective index drives the scan; every filter is checked on the header.
        ix = backend._indexes
        if ix is not None:
            await ix.settle()
            indexes = ix.keys_for(session_id, user_id, wanted)
        elif session_id is not None:
            indexes = [f"{backend.prefix}idx:session:{session_id}"]
        elif user_id is not None:
            indexes = [f"{backend.prefix}idx:user:{user_id}"]
        elif wanted is not None:
            indexes = [f"{backend.prefix}idx:state:{s.value}" for s in sorted(wanted)]
        else:
            indexes = [f"{backend.prefix}idx:created"]
        high = "+inf" if created_before is None else f"({rec.stamp(created_before)}"
        if after is not None and (created_before is None or after[0] < created_before.timestamp()):
            high = repr(after[0])  # inclusive: entries at the cursor's own time are skipped below
        low = "-inf" if created_after is None else f"({rec.stamp(created_after)}"

        def matches(header: RunHeader) -> bool:
            return (
                (session_id is None or header.session_id == session_id)
                and (user_id is None or header.user_id == user_id)
                and (wanted is None or header.state in wanted)
                and (created_after is None or header.created_at > created_after)
                and (created_before is None or header.created_at < created_before)
            )

        found: list[RunHeader] = []
        # Met in the index but unreadable: the index still places it, and the index it
        # was found in is the one filter it is known to match.
        unreadable: list[tuple[Position | None, UnreadableRun]] = []
        chunk: list[tuple[str, float, str]] = []
        seen: set[str] = set()
        async for index, score, run_id in self.merged(indexes, high, low):
            if after is not None and (score, run_id) >= after:
                continue
            if run_id in seen:
                continue  # listed by two of the indexes (it changed state meanwhile)
            seen.add(run_id)
            chunk.append((index, score, run_id))
            # Headers are fetched a chunk per round trip, about as many as the page lacks.
            if len(chunk) > limit - len(found):
                headers = await self.headers(chunk, unreadable)
                found += [h for h in headers if h is not None and matches(h)]
                chunk = []
                if len(found) > limit:
                    break
        if chunk and len(found) <= limit:
            headers = await self.headers(chunk, unreadable)
            found += [h for h in headers if h is not None and matches(h)]
        return make_page(found, limit=limit, unreadable=unreadable)

    async def merged(
        self, indexes: list[str], high: str, low: str
    ) -> AsyncIterator[tuple[str, float, str]]:
        """Entries of several indexes, newest first, as (index, score, run id)."""
        streams = [self._scan(index, high, low) for index in indexes]
        heads: list[tuple[str, float, str] | None] = [await anext(s, None) for s in streams]
        while True:
            live = [(i, h) for i, h in enumerate(heads) if h is not None]
            if not live:
                return
            i, head = max(live, key=lambda item: (item[1][1], item[1][2]))
            yield head
            heads[i] = await anext(streams[i], None)

    async def _scan(self, index: str, high: str, low: str) -> AsyncIterator[tuple[str, float, str]]:
        """One index's entries in (score, run id) order, newest first.

        Each batch starts at the last entry's score rather than at an offset, so
        entries removed or added meanwhile (a listing drops those of expired runs)
        never make the scan skip one.
        """
        link = self.backend._connect()
        last: tuple[float, str] | None = None
        size = BATCH
        while True:
            try:
                async with link.turn():
                    batch = await link.client.zrevrangebyscore(
                        index, high, low, start=0, num=size, withscores=True
                    )
            except UNAVAILABLE as exc:
                self.conn.unavailable(exc)
            except ResponseError as exc:
                if str(exc).startswith("WRONGTYPE"):
                    return  # a damaged index lists nothing; the runs themselves are intact
                self.conn.response_error(exc)
            # Equal scores come back in reverse member order: the (created_at, run_id) order.
            entries = [
                (float(score), rec.text(member))
                for member, score in cast(list[tuple[bytes, float]], batch)
            ]
            fresh = [entry for entry in entries if last is None or entry < last]
            for score, run_id in fresh:
                yield index, score, run_id
            if len(entries) < size:
                return
            if fresh:
                last = fresh[-1]
                high, size = repr(last[0]), BATCH
            else:
                size *= 2  # a whole batch of one creation time, already seen: read further

    async def read_headers(self, run_ids: Sequence[str]) -> list[Any]:
        """HGETALL of runs' headers in one round trip (one per node on a cluster)."""
        link = self.backend._connect()
        pipe = link.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.backend._keys(run_id)[0])
        try:
            async with link.turn():
                replies = await pipe.execute(raise_on_error=False)
        except UNAVAILABLE as exc:
            self.conn.unavailable(exc)
        for raw in replies:
            if isinstance(raw, UNAVAILABLE):
                self.conn.unavailable(raw)
        return replies

    async def headers(
        self,
        entries: Sequence[tuple[str, float, str]],
        unreadable: list[tuple[Position | None, UnreadableRun]] | None = None,
    ) -> list[RunHeader | None]:
        """The headers of listed runs, in one round trip; None for a run gone or damaged.

        A damaged one is added to ``unreadable`` at its index entry's place. On a
        cluster, index entries that disagree with the header are mended.
        """
        replies = await self.read_headers([run_id for _, _, run_id in entries])
        ix = self.backend._indexes
        stale: list[str] = []
        gone: list[tuple[str, str]] = []
        headers: list[RunHeader | None] = []
        for (index, score, run_id), raw in zip(entries, replies, strict=True):
            if isinstance(raw, Exception):
                headers.append(None)  # a key of the wrong type: load_run reports it
                if unreadable is not None:
                    wrong = CorruptRunError(run_id, None, f"its Redis header key: {raw}")
                    unreadable.append(((score, run_id), UnreadableRun.from_error(run_id, wrong)))
            elif not raw:
                if ix is None:
                    # The run expired (retention): drop its entry unless it was created meanwhile.
                    await self.backend._eval(
                        lua.FORGET, [index, self.backend._keys(run_id)[0]], [run_id]
                    )
                else:
                    gone.append((run_id, index))
                headers.append(None)
            else:
                try:
                    header = rec.header_from_hash(run_id, raw)
                except CorruptRunError as exc:
                    headers.append(None)
                    if unreadable is not None:
                        unreadable.append(((score, run_id), UnreadableRun.from_error(run_id, exc)))
                    continue
                if ix is not None and not ix.belongs(index, score, header):
                    stale.append(ix.truth(header, raw.get(b"incarnation"), index))
                headers.append(header)
        if ix is not None and (stale or gone):
            await ix.mend(stale, gone)
        return headers

    async def prunable(
        self, older_than: datetime, cutoff: str, wanted: Sequence[str]
    ) -> list[tuple[str, str]]:
        """Runs in ``wanted`` states updated before ``older_than`` (``cutoff``, stamped).

        Each as (run id, its updated_at stamp): the prune script deletes the run
        only if it has not been updated since.
        """
        backend = self.backend
        ix = backend._indexes
        if ix is not None:
            await ix.settle()
            indexes = ix.keys_for(None, None, {RunState(s) for s in wanted})
        else:
            indexes = [f"{backend.prefix}idx:state:{s}" for s in wanted]
        # created_at <= updated_at, so only runs created before the cutoff can qualify.
        entries = [entry async for entry in self.merged(indexes, f"({cutoff}", "-inf")]
        doomed: list[tuple[str, str]] = []
        for start in range(0, len(entries), BATCH):
            batch = entries[start : start + BATCH]
            for (_, _, run_id), header in zip(batch, await self.headers(batch), strict=True):
                if (
                    header is not None
                    and header.updated_at < older_than
                    and header.state.value in wanted
                ):
                    doomed.append((run_id, rec.stamp(header.updated_at)))
        return doomed
