"""`Worker`: claims runs from the store and drives them, one of a fleet (DESIGN.md §6).

```python
worker = Worker(agents=[support, billing], db="sqlite:///durable.db", concurrency=8)
await worker.run()        # until SIGTERM / SIGINT, or worker.stop()
```

The store is the queue: `Agent.submit_async` stores a PENDING run; a worker
serving the run's agent (by its stored name) and queue *claims* it by
acquiring its lease with the next generation (`Backend.claim_runs`), so two
workers never both proceed. It claims runs interrupted elsewhere too (not at
rest, their lease expired or their worker's registration lapsed), so a fleet
recovers a killed worker's runs by itself, and at start a worker recovers
every such run at once. A run of an agent it does not know is left for
another worker.

* Slots: at most ``concurrency`` runs at once; a claim never asks for more
  than the free slots. ``max_running={"queue": n}`` caps a queue across the
  whole fleet (in the claim's atomic step where the store declares
  `Capability.QUEUE_LIMIT`).
* Liveness: the worker registers with the store and renews it every second
  (`Backend.register_worker`); when it lapses, other workers take its runs
  over without waiting for their leases to expire.
* Graceful stop: SIGTERM / SIGINT (or `stop`) stops claiming; each run is
  released at its next model call (no effect is cut) for another worker to
  continue at once; a run still mid-effect when ``grace`` seconds pass is cut,
  its interruption recorded, and handed back to the fleet the same way. A
  second signal exits at once (the registration lapse then covers its runs).
* ``retry=RunRetry(...)`` resumes runs that failed with a retryable error.

Logs one line per claim, takeover, hand-over and release on
``logging.getLogger("durable_agent.worker")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Final

from durable_agent._claim_rules import check_max_running
from durable_agent._names import check_name
from durable_agent._submit import AT_REST
from durable_agent._worker_metrics import WorkerMetrics
from durable_agent._worker_retry import RetryScan, RunRetry, hand_over
from durable_agent.agent import Agent
from durable_agent.backend import Backend, Capability, ClaimedRun, LeaseOwner
from durable_agent.engine import Engine
from durable_agent.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    DurableAgentError,
    RunBusyError,
    RunCancelledError,
    RunFailedError,
    RunStateError,
    StoreUnavailableError,
)
from durable_agent.records import RunHeader
from durable_agent.run import RunContext
from durable_agent.telemetry._hook import WORKER_CLAIM, WorkerClaim
from durable_agent.tools import Tool

__all__ = ["RunRetry", "Worker"]

_log = logging.getLogger("durable_agent.worker")

_LONGEST_IDLE: Final = 1.0
"""Seconds an idle worker waits at most before looking again (leases expire silently)."""
_FIRST_PAUSE: Final = 0.05
"""The first pause of a polling worker after it found work."""
_BACKLOG_EVERY: Final = 5
"""Liveness ticks between two backlog counts (only with metrics on)."""

_numbers = itertools.count(1)
"""Workers made in this process (they share its lease owner; their ids tell them apart)."""


class Worker:
    """Claims runs of ``agents`` from the store and drives up to ``concurrency`` at once.

    Args:
        agents: the agents whose runs this worker may drive, told apart by
            their ``name`` (two agents may not share one).
        db: the store (a `Backend` or URL); None uses the agents' own store,
            which they must then share.
        concurrency: slots, the most runs driven at once.
        queues: the queues served; None serves every queue.
        max_running: per queue, the most runs holding a lease (live, or lapsed
            and not yet taken over) across the whole fleet: an int >= 0 (0 claims none).
        retry: resume runs that failed with a retryable error (default: off).
        grace: seconds a stopping worker lets effects in flight finish before
            cutting them.
        lease_ttl: seconds of each claimed lease (default: the smallest of the
            agents' ``lease_ttl``); a frozen or partitioned worker's runs are
            taken over after it.
        liveness_ttl: seconds the worker's registration lasts unrenewed (it is
            renewed every second).
    """

    def __init__(
        self,
        agents: Iterable[Agent],
        *,
        db: Backend | str | None = None,
        concurrency: int = 10,
        queues: Iterable[str] | None = None,
        max_running: Mapping[str, int] | None = None,
        retry: RunRetry | None = None,
        grace: float = 30.0,
        lease_ttl: float | None = None,
        liveness_ttl: float = 5.0,
    ) -> None:
        chosen = list(agents)
        if not chosen or not all(isinstance(a, Agent) for a in chosen):
            raise ConfigurationError("Worker(agents=[...]) needs at least one Agent")
        names = [a.name for a in chosen]
        if len(set(names)) != len(names):
            raise ConfigurationError(
                f"Worker(agents=...) has two agents named {_twice(names)!r}: runs are matched "
                "to agents by name, so give each a distinct Agent(name=...)"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"Worker(concurrency={concurrency!r}) must be an int >= 1")
        if isinstance(queues, str):
            raise ConfigurationError("Worker(queues=...) takes a list of queue names")
        served = None if queues is None else tuple(queues)
        for queue in served or ():
            check_name(queue, "Worker(queues=...)")
        for queue in max_running or {}:
            check_name(queue, "Worker(max_running=...)")
        # Here, not at the first claim: that fails inside `run`, after start-up.
        check_max_running(max_running, "Worker")
        if retry is not None and not isinstance(retry, RunRetry):
            raise ConfigurationError(f"Worker(retry=...) takes a RunRetry, got {retry!r}")
        for name, value in (("grace", grace), ("liveness_ttl", liveness_ttl)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"Worker({name}={value!r}) must be positive seconds")
        self.db = _store(db, chosen)
        self.agents = {a.name: a for a in chosen}
        self.concurrency = concurrency
        self.queues = served
        self.max_running = dict(max_running or {})
        self.retry = retry
        self.grace = float(grace)
        self.lease_ttl = float(lease_ttl or min(a._engine.lease_ttl for a in chosen))
        self.liveness_ttl = float(liveness_ttl)
        self.owner = LeaseOwner.process()
        number = next(_numbers)
        self.id = self.owner.id if number == 1 else f"{self.owner.id}#{number}"
        """This worker in logs and telemetry (``durable_agent.worker.id``): its lease owner's
        id, which is the process's, with ``#2``, ``#3``... for more workers of the process."""
        self._engines = {
            a.name: Engine(
                backend=self.db,
                model=a.model,
                retry=a._engine.retry,
                lease_ttl=self.lease_ttl,
                agent_name=a.name,
            )
            for a in chosen
        }
        self._tools: dict[str, dict[str, Tool]] = {a.name: dict(a.tools) for a in chosen}
        self._active: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._stop: asyncio.Event | None = None
        self._signals = 0
        self._pause = _FIRST_PAUSE
        self._retries = None if retry is None else RetryScan(
            self.db, retry, agents=self.agents, queues=self.queues
        )
        self._retry_due: float | None = None  # when the next failed run's backoff ends
        self.claimed = 0
        """Runs claimed since the worker started (takeovers included)."""
        self._metrics = WorkerMetrics(self, self.id)

    @property
    def slots_busy(self) -> int:
        """Runs this worker drives right now (at most ``concurrency``)."""
        return len(self._active)

    # -- controlling ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming and hand the runs in hand back (what SIGTERM does); idempotent."""
        self._stopping = True
        if self._stop is not None:
            self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Claim and drive runs until `stop` (or SIGTERM / SIGINT), then stop gracefully.

        ``handle_signals`` installs the signal handlers (main thread only).
        Store errors while claiming are logged and retried; the run loop
        itself only ends by a stop.
        """
        self._stop = asyncio.Event()
        if self._stopping:
            self._stop.set()
        loop = asyncio.get_running_loop()
        installed = handle_signals and threading.current_thread() is threading.main_thread()
        if installed:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
        heartbeat = asyncio.create_task(self._heartbeat(), name="durable-agent worker liveness")
        try:
            await self.db.register_worker(self.owner, ttl=self.liveness_ttl)
            _log.info(
                "worker %s started: agents %s, queues %s, %d slots",
                self.id, ", ".join(self.agents), _queues(self.queues), self.concurrency,
            )
            await self._claim_loop()
            await self._wind_down()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if installed:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
            with contextlib.suppress(Exception):
                await self.db.unregister_worker(self.owner)
            _log.info("worker %s stopped", self.id)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            _log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        _log.info(
            "%s: no new claims; runs are released at their next model call (grace %g s)",
            signal.Signals(signum).name, self.grace,
        )
        self.stop()

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        assert self._stop is not None
        names = list(self.agents)
        while not self._stopping:
            free = self.concurrency - len(self._active)
            claimed: list[ClaimedRun] = []
            if free > 0:
                try:
                    claimed = await self.db.claim_runs(
                        self.owner, agents=names, queues=self.queues, limit=free,
                        ttl=self.lease_ttl, max_running=self.max_running or None,
                    )
                except DurableAgentError as exc:
                    _log.warning("claiming failed, trying again: %s", exc)
                for claim in claimed:
                    self._start(claim)
                if claimed:
                    self._pause = _FIRST_PAUSE
                if self._retries is not None and len(self._active) < self.concurrency:
                    await self._retry_failed(self._retries)
            if self._stopping:
                break
            if claimed and len(claimed) == free:
                continue  # full, or more may be waiting: look again once a slot frees
            await self._idle()

    async def _idle(self) -> None:
        """Wait for a change in the store, a free slot, a stop or a due retry (a second at most)."""
        assert self._stop is not None
        # A retry falling due changes nothing in the store: no wake-up would announce it.
        due, self._retry_due = self._retry_due, None
        timeout = _LONGEST_IDLE if due is None else min(_LONGEST_IDLE, max(due - time.time(), 0))
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._stop.wait())]
        waits.extend(self._active.values())  # type: ignore[arg-type]
        if len(self._active) < self.concurrency:  # a full worker only waits for a slot
            waits.append(asyncio.ensure_future(self._store_change()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED, timeout=timeout)
        finally:
            for future in waits:
                if future not in self._active.values():
                    future.cancel()
                    # A wake-up wait may still end in an error (the store went away, or
                    # a driver turned the cancel into one): unread, asyncio logs it.
                    future.add_done_callback(_read_outcome)

    async def _store_change(self) -> None:
        if Capability.WAKE_UP in self.db.capabilities:
            try:
                token = await self.db.wait_for_change(None, timeout=0)
                await self.db.wait_for_change(token, timeout=_LONGEST_IDLE)
                return
            except DurableAgentError:
                pass  # the store is out of reach: pause as when polling, never spin
        # Polling (SQLite, JSON files): soon after work, then less and less often.
        await asyncio.sleep(self._pause)
        self._pause = min(self._pause * 1.5, _LONGEST_IDLE)

    def _start(self, claim: ClaimedRun) -> None:
        header = claim.header
        self.claimed += 1
        if claim.takeover:
            previous = claim.previous
            _log.info(
                "took over run %s (agent %s, queue %s, %s) from %s, generation %d",
                header.run_id, header.agent_name, header.queue, header.state.value,
                previous.owner if previous else "?", claim.lease.generation,
                extra={"run_id": header.run_id},
            )
        else:
            _log.info(
                "claimed run %s (agent %s, queue %s, %s), generation %d",
                header.run_id, header.agent_name, header.queue, header.state.value,
                claim.lease.generation, extra={"run_id": header.run_id},
            )
        self._metrics.claimed("takeover" if claim.takeover else "pending", header)
        task = asyncio.create_task(self._drive(claim), name=f"durable-agent run {header.run_id}")
        self._active[header.run_id] = task
        task.add_done_callback(lambda _: self._active.pop(header.run_id, None))

    # -- driving ------------------------------------------------------------------------

    def _is_stopping(self) -> bool:
        return self._stopping

    async def _drive(self, claim: ClaimedRun) -> None:
        run_id, name = claim.run_id, claim.header.agent_name
        engine = self._engines[name]
        previous = claim.previous
        # Set in this task only: the segment it drives reads it (telemetry, logs).
        WORKER_CLAIM.set(WorkerClaim(
            run_id, self.id, claim.header.queue,
            "takeover" if previous is not None else "pending", self._is_stopping,
            previous_owner=previous.owner if previous is not None else None,
            previous_generation=previous.generation if previous is not None else None,
        ))
        try:
            ctx = await engine.run_claimed(
                run_id, self._tools[name], claim.lease, stop_when=lambda: self._stopping
            )
        except RunFailedError as exc:
            self._metrics.released("rest")
            _log.info("run %s failed (recorded): %s", run_id, exc, extra={"run_id": run_id})
        except RunCancelledError:
            self._metrics.released("rest")
            _log.info("run %s was cancelled (recorded)", run_id, extra={"run_id": run_id})
        except (ConcurrentUpdateError, RunBusyError, RunStateError) as exc:
            self._metrics.released("lost")
            _log.warning(
                "run %s: another owner holds it now, this worker stopped driving it: %s",
                run_id, exc, extra={"run_id": run_id},
            )
        except StoreUnavailableError as exc:
            # Not a refusal: nothing says another owner took the run. Whether the
            # last write landed is for the store to say; the lease, unrenewed from
            # now on, lapses on the store's clock and any worker (this one too)
            # claims the run again and continues from what the store holds.
            self._metrics.released("unreachable")
            _log.warning(
                "run %s: lost the connection to the store, this worker stopped driving it "
                "(%s); its lease lapses within %g s and another worker continues it",
                run_id, exc, claim.lease.ttl, extra={"run_id": run_id},
            )
        except asyncio.CancelledError:
            await asyncio.shield(self._hand_over(run_id))
            raise
        except Exception:
            _log.exception("run %s: driving it failed", run_id, extra={"run_id": run_id})
        else:
            self._rested(ctx)

    def _rested(self, ctx: RunContext) -> None:
        self._metrics.released("rest" if ctx.state in AT_REST else "stop")
        if ctx.state in AT_REST:
            _log.info(
                "released run %s: it rests in %s", ctx.run_id, ctx.state.value,
                extra={"run_id": ctx.run_id},
            )
        else:
            _log.info(
                "released run %s in %s for another worker (stopping)", ctx.run_id,
                ctx.state.value, extra={"run_id": ctx.run_id},
            )

    async def _hand_over(self, run_id: str) -> None:
        try:
            if await hand_over(self.db, run_id, self.owner, self.lease_ttl):
                self._metrics.released("cut")
                _log.info(
                    "released run %s after cutting it (interruption recorded, resumed for "
                    "another worker)", run_id, extra={"run_id": run_id},
                )
        except Exception as exc:
            _log.warning(
                "run %s: handing it over failed (%s); it is taken over once its lease "
                "expires", run_id, exc, extra={"run_id": run_id},
            )

    async def _wind_down(self) -> None:
        """After a stop: let runs reach their next model call, cut what is left after grace."""
        running = list(self._active.values())
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self.grace)
        for task in late:
            task.cancel()
        if late:
            _log.info("grace of %g s passed: cutting %d run(s)", self.grace, len(late))
            await asyncio.wait(late)

    # -- run-level retries ----------------------------------------------------------------

    async def _retry_failed(self, retries: RetryScan) -> None:
        """Resume every ERROR run the retry policy says is due, up to the free slots."""
        free = self.concurrency - len(self._active)
        for due in await retries.due(limit=free, busy=self._active, stopping=self._is_stopping):
            self._start_retry(due.header, due.retry)
        self._retry_due = retries.next_due

    def _start_retry(self, header: RunHeader, retry: int) -> None:
        run_id, name = header.run_id, header.agent_name
        _log.info("retrying failed run %s (agent %s)", run_id, name, extra={"run_id": run_id})
        self._metrics.claimed("retry", header)
        task = asyncio.create_task(
            self._resume(run_id, name, header.queue, retry), name=f"durable-agent retry {run_id}"
        )
        self._active[run_id] = task
        task.add_done_callback(lambda _: self._active.pop(run_id, None))

    async def _resume(self, run_id: str, name: str, queue: str, retry: int) -> None:
        assert self.retry is not None
        WORKER_CLAIM.set(WorkerClaim(
            run_id, self.id, queue, "retry", self._is_stopping,
            retry=retry, retries=self.retry.attempts,
        ))
        try:
            ctx = await self._engines[name].resume(run_id, self._tools[name])
        except RunFailedError as exc:
            self._metrics.released("rest")
            _log.info("run %s failed again (recorded): %s", run_id, exc, extra={"run_id": run_id})
        except (RunBusyError, RunStateError, ConcurrentUpdateError):
            pass  # another worker retried it first
        except Exception:
            _log.exception("run %s: retrying it failed", run_id, extra={"run_id": run_id})
        else:
            self._rested(ctx)

    async def _heartbeat(self) -> None:
        """Renew the registration every second (a fifth of ``liveness_ttl`` at most)."""
        interval = min(1.0, self.liveness_ttl / 5)
        ticks = 0
        while True:
            if self._metrics.enabled and ticks % _BACKLOG_EVERY == 0:
                # Bounded: a slow listing must not delay the renewal below.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._metrics.count_backlog(self.db, self.agents, self.queues), interval
                    )
            await asyncio.sleep(interval)
            ticks += 1
            try:
                await self.db.register_worker(self.owner, ttl=self.liveness_ttl)
            except DurableAgentError as exc:
                _log.warning("renewing the worker registration failed: %s", exc)


def _store(db: Backend | str | None, agents: list[Agent]) -> Backend:
    if isinstance(db, Backend):
        return db
    if isinstance(db, str):
        from durable_agent.registry import open_backend

        return open_backend(db)
    if db is None:
        stores = {id(a.db) for a in agents}
        if len(stores) > 1:
            raise ConfigurationError(
                "Worker(agents=...) have different stores; pass Worker(db=...) to choose one"
            )
        return agents[0].db
    raise ConfigurationError(f"Worker(db=...) must be a Backend, a URL or None, got {db!r}")


def _read_outcome(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


def _twice(names: list[str]) -> str:
    return next(n for n in names if names.count(n) > 1)


def _queues(queues: tuple[str, ...] | None) -> str:
    return "all" if queues is None else ", ".join(queues)
