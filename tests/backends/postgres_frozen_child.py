"""A PostgresBackend client that freezes itself inside a transaction holding a run's row lock.

``python tests/backends/postgres_frozen_child.py URL SCHEMA RUN_ID TIMEOUT BARRIER``:
opens the backend with ``idle_in_transaction_timeout=TIMEOUT``, and on its
group-commit writer's own connection begins a transaction that locks the run's
row (as a batch of appends does), writes its server session's pid to
``BARRIER`` (a file, written whole), then stops itself with SIGSTOP: a frozen
client, as a paused VM or a debugger would leave it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from durable_agent.backends.postgres import PostgresBackend


async def main(url: str, schema: str, run_id: str, timeout: float, barrier: str) -> None:
    backend = PostgresBackend(url, schema=schema, idle_in_transaction_timeout=timeout)
    link = await backend._connected()
    conn = link.writer.conn
    assert conn is not None
    await conn.execute("BEGIN")
    await conn.execute(f"SELECT 1 FROM {schema}.runs WHERE run_id = %s FOR UPDATE", (run_id,))
    _write_whole(barrier, str(conn.info.backend_pid))
    os.kill(os.getpid(), signal.SIGSTOP)


def _write_whole(path: str, text: str) -> None:
    partial = path + ".part"
    with open(partial, "w") as out:
        out.write(text)
    os.replace(partial, path)


if __name__ == "__main__":
    url, schema, run_id, timeout, barrier = sys.argv[1:]
    asyncio.run(main(url, schema, run_id, float(timeout), barrier))
