"""(l) PostgreSQL group commit by kind of write: merged into one statement, or one each.

``R`` runs write at once through one `PostgresBackend` (one writer
connection): ``N`` appends each, then ``N`` lease renewals each, then a mix
(half the runs appending while the other half renew). Each shared batch goes
to the server as one message; the variants differ in what that message holds:

* ``appends only``: only appends merge (as before renewals merged): a batch of
  renewals is one statement per renewal in one simple query, which the server
  parses and plans each time;
* ``every kind``: the writes of each kind (appends, renewals, releases) of a
  batch merge into one statement, a prepared one when the batch is of one kind.

The variants take turns, round by round, on the same runs; each ratio is the
median of the rounds' ratios (every kind / appends only, > 1 is faster). No target: it shows
what merging renewals bought.

Uses ``DURABLE_AGENT_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and a schema of its own,
dropped afterwards. Run alone: ``python benchmarks/bench_postgres_writer.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from _common import Row, info, median, run_script
from bench_postgres import URL, _Appender, new_run

NAME = "l) postgres writer"


async def _rate(calls: list[Callable[[], Awaitable[None]]], per_run: int) -> float:
    async def drive(call: Callable[[], Awaitable[None]]) -> None:
        for _ in range(per_run):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(drive(c) for c in calls))
    return len(calls) * per_run / (time.perf_counter() - started)


async def _round(store: Any, runs: int, per_run: int) -> tuple[float, float, float]:
    appenders = []
    for _ in range(runs):
        run_id = f"w-{uuid.uuid4().hex[:12]}"
        appenders.append(_Appender(store, run_id, await new_run(store, run_id), 2 * per_run))

    def renewer(a: _Appender) -> Callable[[], Awaitable[None]]:
        async def renew() -> None:
            a.lease = await store.renew_lease(a.run_id, a.lease)

        return renew

    appends = await _rate(list(appenders), per_run)
    renewals = await _rate([renewer(a) for a in appenders], per_run)
    half = runs // 2
    mixed = await _rate([*appenders[:half], *(renewer(a) for a in appenders[half:])], per_run)
    return appends, renewals, mixed


async def _measure(quick: bool) -> list[Row]:
    import psycopg

    from durable_agent.backends.postgres import PostgresBackend

    schema = f"benchw_{uuid.uuid4().hex[:10]}"
    try:
        admin = await psycopg.AsyncConnection.connect(URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        return [info(NAME, "postgres", f"skipped: {URL} is not reachable ({exc})")]
    runs, per_run, rounds = (64, 5, 4) if quick else (128, 10, 6)
    results: dict[str, list[tuple[float, float, float]]] = {"appends only": [], "every kind": []}
    store = PostgresBackend(URL, schema=schema)
    try:
        writer = (await store._connected()).writer
        every = dict(writer.merges)
        only = {q: m for q, m in every.items() if q == store._sql.append}
        await _round(store, runs, 2)  # warm: connections, prepared statements
        for turn in range(rounds):
            order = ["appends only", "every kind"]
            for name in order if turn % 2 == 0 else order[::-1]:
                writer.merges = only if name == "appends only" else every
                results[name].append(await _round(store, runs, per_run))
    finally:
        await store.close()
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
    rows = []
    pairs = list(zip(results["appends only"], results["every kind"], strict=True))
    for i, label in enumerate(("appends", "renewals", "half appends, half renewals")):
        before = median([b[i] for b, _ in pairs])
        after = median([a[i] for _, a in pairs])
        ratio = median([a[i] / b[i] for b, a in pairs])  # round by round
        rows.append(
            info(
                NAME,
                f"{runs} runs, {label}/s: appends only merged / every kind merged",
                f"{before:,.0f} / {after:,.0f} ({ratio:.2f}x)",
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


def main() -> None:
    run_script(__doc__ or NAME, run)


if __name__ == "__main__":
    main()
