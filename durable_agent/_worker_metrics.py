"""A worker's OpenTelemetry metrics: slots, slots busy, the claimable backlog, claims, releases.

Nothing here runs unless telemetry is on (`durable_agent.telemetry.meter` is not
None): a worker then registers three observable gauges under the library's meter,
read when the application's metric reader collects, refreshes its backlog count
once per liveness tick, and counts its claims and releases.

- ``durable_agent.worker.slots``: the worker's ``concurrency``.
- ``durable_agent.worker.slots.busy``: the runs it drives right now.
- ``durable_agent.worker.backlog``: PENDING runs it could claim (its agents, its
  queues, ``not_before`` passed), counted from one listing of at most
  `BACKLOG_SCAN` PENDING runs; a store with more reports `BACKLOG_SCAN` (read it
  as "at least"). Interrupted runs waiting for takeover are not counted: telling
  them apart needs each lease's owner, which is what a claim checks.

- ``durable_agent.worker.claims``: runs it started driving, by
  ``durable_agent.claim.kind``: ``pending`` (nobody held it: submitted, or handed
  back by a stopping worker), ``takeover`` (from an expired or dead holder),
  ``retry`` (a `RunRetry` of an ERROR run).
- ``durable_agent.worker.releases``: runs it gave back, by
  ``durable_agent.release.kind``: ``rest`` (the run came to rest), ``stop``
  (handed back unfinished at a stop, between two steps), ``cut`` (cut when the
  grace passed, then handed back); and runs it stopped driving without giving
  them back: ``lost`` (the fence refused its write: another owner holds the
  run) and ``unreachable`` (the store could not be reached: the lease lapses
  and another worker continues the run).

Every point carries ``durable_agent.worker.id`` (`Worker.id`), as the spans
of the segments a worker drives do. The gauges hold each worker weakly, so a
worker that is gone stops reporting and is freed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

from durable_agent import telemetry
from durable_agent.backend import Backend
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader
from durable_agent.telemetry._hook import ClaimKind

__all__ = ["BACKLOG_SCAN", "WorkerMetrics"]

BACKLOG_SCAN: Final = 1000
"""The most PENDING runs one backlog count reads (one page of `Backend.list_runs`)."""


class _Observed(Protocol):
    concurrency: int

    @property
    def slots_busy(self) -> int: ...


class _Gauges:
    """The instruments of one meter: three gauges reporting every live worker, two counters.

    OpenTelemetry keeps the first instrument registered under a name and drops a
    second one's callbacks, so the instruments are made once per meter and the
    gauges read the workers from a weak set.
    """

    def __init__(self, meter: Any) -> None:
        self.workers: weakref.WeakSet[WorkerMetrics] = weakref.WeakSet()
        self.claims = meter.create_counter(
            "durable_agent.worker.claims", unit="{run}",
            description="Runs a worker started driving, by durable_agent.claim.kind",
        )
        self.releases = meter.create_counter(
            "durable_agent.worker.releases", unit="{run}",
            description="Runs a worker gave back or lost, by durable_agent.release.kind",
        )
        meter.create_observable_gauge(
            "durable_agent.worker.slots", callbacks=[self._slots], unit="{run}",
            description="Runs a worker may drive at once (its concurrency)",
        )
        meter.create_observable_gauge(
            "durable_agent.worker.slots.busy", callbacks=[self._busy], unit="{run}",
            description="Runs a worker drives right now",
        )
        meter.create_observable_gauge(
            "durable_agent.worker.backlog", callbacks=[self._backlog], unit="{run}",
            description="PENDING runs this worker could claim (at most one page counted)",
        )

    def _observe(self, read: Callable[[WorkerMetrics, _Observed], int | None]) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        for metrics in list(self.workers):
            worker = metrics.worker()
            value = read(metrics, worker) if worker is not None else None
            if value is not None:
                yield Observation(value, metrics.attributes)

    def _slots(self, _options: Any) -> Iterator[Any]:
        return self._observe(lambda _m, worker: worker.concurrency)

    def _busy(self, _options: Any) -> Iterator[Any]:
        return self._observe(lambda _m, worker: worker.slots_busy)

    def _backlog(self, _options: Any) -> Iterator[Any]:
        return self._observe(lambda metrics, _w: metrics.backlog)


_gauges: dict[int, tuple[Any, _Gauges]] = {}
"""The gauges made for each meter (by id, holding the meter so the id stays its own)."""


class WorkerMetrics:
    """The gauges of one worker; `enabled` is False (and everything a no-op) without telemetry."""

    def __init__(self, worker: _Observed, worker_id: str) -> None:
        self.backlog: int | None = None
        """The last backlog count, or None before the first (or when counting failed)."""
        self.worker = weakref.ref(worker)
        self.attributes = {"durable_agent.worker.id": worker_id}
        self._instruments: _Gauges | None = None
        meter = telemetry.meter()
        self.enabled = meter is not None
        if meter is None:
            return
        found = _gauges.get(id(meter))
        if found is None:
            found = _gauges[id(meter)] = (meter, _Gauges(meter))
        self._instruments = found[1]
        found[1].workers.add(self)

    def claimed(self, kind: ClaimKind, header: RunHeader) -> None:
        """The worker claimed (or retries) the run of ``header``."""
        if self._instruments is not None:
            self._instruments.claims.add(1, {
                **self.attributes, "durable_agent.claim.kind": kind,
                "durable_agent.queue": header.queue, "gen_ai.agent.name": header.agent_name,
            })

    def released(self, kind: Literal["rest", "stop", "cut", "lost", "unreachable"]) -> None:
        """The worker gave a run back (at rest, unfinished or cut at a stop) or lost it."""
        if self._instruments is not None:
            self._instruments.releases.add(
                1, {**self.attributes, "durable_agent.release.kind": kind}
            )

    async def count_backlog(
        self, db: Backend, agents: Collection[str], queues: Collection[str] | None
    ) -> None:
        """Count the claimable PENDING runs; a store error leaves no number (never raises)."""
        if not self.enabled:
            return
        try:
            page = await db.list_runs(states=[RunState.PENDING], limit=BACKLOG_SCAN)
        except Exception:
            self.backlog = None
            return
        now = datetime.now(UTC)
        self.backlog = sum(
            1
            for header in page.runs
            if header.agent_name in agents
            and (queues is None or header.queue in queues)
            and (header.not_before is None or header.not_before <= now)
        )
