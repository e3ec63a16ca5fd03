"""`Fleet`: the worker children of one test, the store they share and the effects they wrote.

Each fleet test runs ``durable-agent worker`` children over one store, with the
tool of `tests.workers.fleet_app`, which records its effects under a unique
idempotency key and logs every attempt; `tests.workers.fleet_check` judges the
outcome. A worker can be started under a command prefix (``ip netns exec …
unshare …``) to make it another host.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from durable_agent._submit import AT_REST
from durable_agent.backend import Backend
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader, StoredRun
from durable_agent.registry import open_backend
from tests._barriers import DEADLINE
from tests.workers import fleet_app
from tests.workers.fleet_app import TOOL_CALLS
from tests.workers.fleet_check import FleetReport, check_fleet

ROOT = Path(__file__).resolve().parents[2]

_MOVING = [s for s in RunState if s not in AT_REST]


class Fleet:
    """The children of one test, the store they share and the effects they wrote."""

    def __init__(self, folder: Path, url: str) -> None:
        self.dir = folder
        self.url = url
        self.env = {**os.environ, "FLEET_DIR": str(folder)}
        fleet_app.create_effects_db(folder)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    # -- children ------------------------------------------------------------------------

    def submit(self, count: int, queue: str = "default", priority: int = 0) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "tests.workers.fleet_app", "submit", self.url, str(count),
             queue, str(priority)],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=DEADLINE, check=True,
        )
        return done.stdout.split()

    def worker(
        self,
        name: str,
        *options: str,
        url: str | None = None,
        prefix: Sequence[str] = (),
        tagged: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start a worker logging to ``NAME.log``; ``tagged`` names its effects ``NAME``.

        ``prefix`` runs it under another command (a namespace of its own), ``url``
        reaches the store by another address than the test's.
        """
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the child
        env = {**self.env, "FLEET_WORKER": name} if tagged else self.env
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "durable_agent", "worker", "--db", url or self.url,
             "--agent", "tests.workers.fleet_app:fleet", *options],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
        log.close()
        self.workers[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def close_gate(self) -> None:
        (self.dir / "gate").touch()

    def open_gate(self) -> None:
        (self.dir / "gate").unlink(missing_ok=True)

    def started(self, who: int | str | None = None) -> list[str]:
        """The calls that got into the tool, of one process (pid or ``FLEET_WORKER``) or all."""
        folder = self.dir / "started"
        names = [p.name for p in folder.iterdir()] if folder.exists() else []
        return [n for n in names if who is None or n.endswith(f"-{who}")]

    def in_tool(self, who: str) -> int:
        """How many calls of worker ``who`` are inside the tool now (held at the gate).

        Counted from the ``inside`` markers, not the ``live`` table: a call is
        counted only once it is done with ``effects.db`` (see `tests.workers.fleet_app`),
        so a worker stopped with its calls inside holds no lock of that file.
        """
        folder = self.dir / "inside"
        names = [p.name for p in folder.iterdir()] if folder.exists() else []
        return sum(1 for n in names if n.endswith(f"-{who}"))

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=DEADLINE)

    # -- the store and the effects ---------------------------------------------------------

    def read(self, run_ids: list[str]) -> dict[str, StoredRun]:
        async def main() -> dict[str, StoredRun]:
            backend: Backend = open_backend(self.url)
            async with backend:
                return {r: await backend.load_run(r) for r in run_ids}

        return asyncio.run(main())

    def headers(self, run_ids: list[str]) -> dict[str, RunHeader]:
        return {r: s.header for r, s in self.read(run_ids).items()}

    def all_rest(self, run_ids: list[str], state: RunState = RunState.DONE) -> bool:
        return all(h.state is state for h in self.headers(run_ids).values())

    def moving(self) -> list[RunHeader]:
        """The headers of every run not at rest, in one listing (cheaper than loading each)."""

        async def main() -> list[RunHeader]:
            backend: Backend = open_backend(self.url)
            found: list[RunHeader] = []
            async with backend:
                cursor: str | None = None
                while True:
                    page = await backend.list_runs(states=_MOVING, limit=500, cursor=cursor)
                    found.extend(page.runs)
                    cursor = page.next_cursor
                    if cursor is None:
                        return found

        return asyncio.run(main())

    def check_finished(self, run_ids: list[str], *, reruns_at_most: int) -> FleetReport:
        """`check_fleet` over these runs, and at most ``reruns_at_most`` re-executions."""
        report = check_fleet(self.read(run_ids), self.dir, tool_calls=TOOL_CALLS)
        assert report.reruns <= reruns_at_most
        return report
