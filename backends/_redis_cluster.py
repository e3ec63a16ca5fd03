"""The listing indexes of `RedisBackend` on Redis Cluster, kept beside the runs' own slots.

On Redis Cluster a Lua script may touch the keys of one hash slot only. Each
run's keys share the slot of ``{run_id}``, so every write to a run is still one
atomic script; the indexes (by creation time, state, session and user) live in
the slot of ``{idx}`` and are brought up to date by a second call right after.
`durable_agent.backends._redis_cluster_scripts` describes the keys and the three
rules (intent first, versions, remove then look again) that make that second
step safe when the writer dies or runs late.

What a listing guarantees, then:

* it never shows a run in a state, session or user it is not in: every listed
  header is read from the run's own keys and every filter is checked on it;
* a listing that starts after a write returned reflects it, even if the writer
  died between its script and its index update: each listing first finishes
  the index updates that were announced and not done;
* a listing that runs while a run comes to rest, resumes, is created or is
  deleted may miss it or (with the header's new state) include it;
* entries of runs that are gone (deleted, pruned or expired by ``retention``)
  are removed by the listings that meet them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from redis.exceptions import RedisClusterException, RedisError

from durable_agent.backends import _redis_cluster_place_scripts as pl
from durable_agent.backends import _redis_cluster_scripts as cl
from durable_agent.backends import _redis_records as rec
from durable_agent.errors import CorruptRunError, StoreUnavailableError
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader

if TYPE_CHECKING:
    from durable_agent.backends.redis import RedisBackend

ACTIVE: Final = "ACTIVE"
"""The index bucket of the states a run moves through while it runs."""
_ACTIVE_STATES: Final = frozenset({RunState.PENDING, RunState.MODEL_CALL, RunState.TOOL_EXEC})
INTENT_AGE: Final = 600.0
"""Seconds after which an intent whose write never happened is dropped."""
FAILURES: Final = (RedisError, RedisClusterException, OSError)
"""What a redis-py call may raise; `RedisBackend._translate` says what it means."""
_CHUNK: Final = 200
_PENDING_PAGE: Final = 500


def bucket(state: RunState) -> str:
    """The state index a run in ``state`` is listed in on Redis Cluster."""
    return ACTIVE if state in _ACTIVE_STATES else state.value


def _escape_glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


class ClusterIndexes:
    """Index keys and index upkeep of one `RedisBackend` in cluster mode."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.base = f"{backend.prefix}{{idx}}:"
        self.created = f"{self.base}created"
        self.runs = f"{self.base}runs"
        self.pending = f"{self.base}pending"
        self.counter = f"{self.base}incarnation"

    def state(self, name: str) -> str:
        return f"{self.base}state:{name}"

    def session(self, session_id: str) -> str:
        return f"{self.base}session:{session_id}"

    def user(self, user_id: str) -> str:
        return f"{self.base}user:{user_id}"

    def keys_for(
        self, session_id: str | None, user_id: str | None, wanted: set[RunState] | None
    ) -> list[str]:
        """The most selective index for a listing: session, else user, else states."""
        if session_id is not None:
            return [self.session(session_id)]
        if user_id is not None:
            return [self.user(user_id)]
        if wanted is not None:
            return [self.state(name) for name in sorted({bucket(s) for s in wanted})]
        return [self.created]

    # -- the run's side: what its header says ----------------------------------------------

    @staticmethod
    def truth(header: RunHeader, incarnation: object, found: str | None = None) -> str:
        """INDEX's argument for a run, from its header and incarnation number.

        ``found``: an index key the run was listed from, to be removed from it
        unless it is one of the run's own.
        """
        return json.dumps(
            [
                header.run_id,
                _number(incarnation),
                header.seq,
                header.state.value,
                rec.stamp(header.created_at),
                header.session_id,
                header.user_id,
                found,
            ],
            ensure_ascii=False,
        )

    @staticmethod
    def truth_of_reply(run_id: str, reply: Sequence[Any]) -> str:
        """INDEX's argument from the append script's ``indexed`` reply."""
        return json.dumps(
            [
                run_id,
                _number(reply[3]),
                int(rec.text(reply[4])),
                rec.text(reply[5]),
                rec.text(reply[6]),
                rec.optional(reply[7]),
                rec.optional(reply[8]),
            ],
            ensure_ascii=False,
        )

    def belongs(self, index: str, score: float, header: RunHeader) -> bool:
        """Whether ``index`` (where the run was found, with ``score``) is one of its own."""
        if score != float(rec.stamp(header.created_at)):
            return False  # another incarnation of the id
        kind, _, name = index[len(self.base) :].partition(":")
        if kind == "state":
            return bucket(header.state) == name
        if kind == "session":
            return header.session_id == name
        if kind == "user":
            return header.user_id == name
        return True

    # -- the index slot -------------------------------------------------------------------------

    async def intent(self, run_id: str, seq: int, *, new: bool = False) -> str:
        """Announce a write that brings ``run_id`` to ``seq`` and changes its index entries.

        With ``new`` (a create) returns the run's new incarnation number.
        """
        reply = await self.backend._eval(
            cl.INTENT, [self.pending, self.counter], [run_id, str(seq), "1" if new else "0"]
        )
        return rec.text(reply)

    async def index(
        self,
        truths: Sequence[str],
        *,
        after_write: bool = False,
        drop: tuple[str, str, int] | None = None,
    ) -> None:
        """Put runs in the indexes their headers (``truths``) call for.

        ``after_write``: the run's own write has happened, so failing here must not
        report that write as failed; the intent stays and a listing finishes the job.
        ``drop``: (queue, run id, generation) of a lease that write released, whose
        queue place goes in the same call (`durable_agent.backends._redis_cluster_places`).
        """
        try:
            if drop is not None:
                queue, run_id, generation = drop
                args = [self.base, queue, run_id, str(generation), *truths[:1]]
                await self.backend._eval(pl.INDEX_DROP, [self.runs, self.pending], args)
                truths = truths[1:]
            for start in range(0, len(truths), _CHUNK):
                await self.backend._eval(
                    cl.INDEX,
                    [self.runs, self.pending],
                    [self.base, *truths[start : start + _CHUNK]],
                )
        except StoreUnavailableError:
            if not after_write:
                raise

    async def unindex(
        self, items: Sequence[tuple[str, str, str]], *, after_write: bool = False
    ) -> None:
        """Remove runs' entries: (run id, incarnation or '', index it was found in or '')."""
        try:
            for start in range(0, len(items), _CHUNK):
                args = [self.base]
                for item in items[start : start + _CHUNK]:
                    args.extend(item)
                await self.backend._eval(cl.UNINDEX, [self.runs], args)
        except StoreUnavailableError:
            if not after_write:
                raise

    async def mend(
        self, stale: Sequence[str], gone: Sequence[tuple[str, str]], *, after_write: bool = False
    ) -> None:
        """Repairs a listing found: ``stale`` truths to apply, ``gone`` (run id, index) pairs.

        Runs are removed first and their headers read again after: a run created
        again in between is put back.
        """
        try:
            if stale:
                await self.index(stale)
            if gone:
                await self.unindex([(run_id, "", index) for run_id, index in gone])
                raws = await self.backend._read_headers([run_id for run_id, _ in gone])
                back = [
                    truth
                    for (run_id, _), raw in zip(gone, raws, strict=True)
                    if (truth := self._truth_of_raw(run_id, raw)) is not None
                ]
                if back:
                    await self.index(back)
        except StoreUnavailableError:
            if not after_write:
                raise

    async def settle(self) -> None:
        """Finish the index updates announced by writers that have not done them (yet)."""
        link = self.backend._connect()
        try:
            async with link.turn():
                _, found = await link.client.hscan(self.pending, 0, count=_PENDING_PAGE)
        except FAILURES as exc:
            self.backend._translate(exc)
        pending = cast(dict[bytes, bytes], found)
        if not pending:
            return
        ids = [rec.text(key) for key in pending]
        raws = await self.backend._read_headers(ids)
        truths: list[str] = []
        unresolved: list[str] = []
        for run_id, raw in zip(ids, raws, strict=True):
            read = _read(run_id, raw)
            announced = max((_seq(t) for t in _tokens(pending[run_id.encode()])), default=0)
            if read is not None:
                truths.append(self.truth(*read))
            if read is None or read[0].seq < announced:
                unresolved.append(run_id)  # announced, not (yet) written: expire when old
        if truths:
            await self.index(truths)
        if unresolved:
            await self.backend._eval(
                cl.EXPIRE_INTENTS, [self.pending], [repr(INTENT_AGE), *unresolved]
            )

    async def rebuild(self) -> int:
        """Re-index every run from its header and drop entries of runs that are gone.

        Returns how many runs were (re)indexed. Safe while others write.
        """
        backend = self.backend
        link = backend._connect()
        pattern = f"{_escape_glob(backend.prefix)}{{*}}:header"
        head, tail = len(backend.prefix) + 1, len("}:header")
        indexed = 0
        batch: list[str] = []
        known: list[str] = []
        try:
            async for key in link.client.scan_iter(match=pattern, count=1000):
                batch.append(rec.text(key)[head:-tail])
                if len(batch) >= _CHUNK:
                    indexed += await self._reindex(batch)
                    batch = []
            if batch:
                indexed += await self._reindex(batch)
            async for run_id, _ in link.client.hscan_iter(self.runs, count=1000):
                known.append(rec.text(run_id))
        except FAILURES as exc:
            backend._translate(exc)
        for start in range(0, len(known), _CHUNK):
            ids = known[start : start + _CHUNK]
            raws = await backend._read_headers(ids)
            gone = [(run_id, "") for run_id, raw in zip(ids, raws, strict=True) if not raw]
            if gone:
                await self.mend([], gone)
        return indexed

    async def _reindex(self, ids: list[str]) -> int:
        raws = await self.backend._read_headers(ids)
        truths = [
            truth
            for run_id, raw in zip(ids, raws, strict=True)
            if (truth := self._truth_of_raw(run_id, raw)) is not None
        ]
        await self.index(truths)
        return len(truths)

    def _truth_of_raw(self, run_id: str, raw: Any) -> str | None:
        """The truth of a header as HGETALL returned it; None if gone or damaged."""
        read = _read(run_id, raw)
        return None if read is None else self.truth(*read)


def _read(run_id: str, raw: Any) -> tuple[RunHeader, object] | None:
    """A header and its incarnation from HGETALL's reply; None if gone or damaged."""
    if not raw or not isinstance(raw, dict):
        return None
    try:
        return rec.header_from_hash(run_id, raw), raw.get(b"incarnation")
    except CorruptRunError:
        return None


def _number(value: object) -> int:
    try:
        return int(rec.text(value)) if value is not None and value is not False else 0
    except ValueError:
        return 0


def _tokens(raw: Any) -> list[Any]:
    """The intents stored for a run: [[seq, server time], ...]."""
    try:
        tokens = json.loads(raw) if raw else []
    except ValueError:
        return []
    return tokens if isinstance(tokens, list) else []


def _seq(token: Any) -> int:
    try:
        return int(token[0])
    except (TypeError, ValueError, IndexError):
        return 0
