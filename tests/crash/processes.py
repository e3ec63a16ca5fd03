"""Running the crash child (`tests/crash/child.py`) and reading what it stored.

Shared by the crash tests: start a child in a new process (forked with the
package imported already), wait for it and describe how it ended, load the run
it left in its store, and run several children at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from durable_agent.records import StoredRun
from durable_agent.registry import open_backend
from durable_agent.run import RunContext
from tests import _preloaded
from tests._preloaded import Forked
from tests.crash.child import ChildArgs, ChildResult

CHILD = Path(__file__).with_name("child.py")
RUN_ID = "crash-run"
PARALLEL = 4
"""Child processes at once: most of a child's life is interpreter start-up."""
CHILD_TIMEOUT = 120.0
"""A child still running after this is killed and reported: a bound on a failure only
(a healthy child takes a second or two, five times that on a loaded machine)."""

StoreUrl = Callable[[Path], str]
"""A fresh, empty store's URL for a case whose files live in the given folder."""



@dataclass
class Child:
    """A child process that has exited (and been reaped)."""

    args: ChildArgs
    pid: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def result(self) -> ChildResult | None:
        lines = self.stdout.strip().splitlines()
        if self.returncode != 0 or not lines:
            return None
        parsed: ChildResult = json.loads(lines[-1])
        return parsed

    def describe(self) -> str:
        result = self.result
        if result is not None and result["error"] is not None:
            error = result["error"]
            return (
                f"pid {self.pid} ({self.args['mode']}) raised {error['type']}: "
                f"{error['message']}\n{error['traceback'][-3000:]}"
            )
        return (
            f"pid {self.pid} ({self.args['mode']}) exited {self.returncode}\n"
            f"stdout: {self.stdout.strip()[-2000:]}\nstderr: {self.stderr.strip()[-3000:]}"
        )


def spawn(args: ChildArgs) -> Forked:
    """``python child.py ARGS`` in a new process, forked with the package imported already."""
    return _preloaded.start(script=CHILD, args=[json.dumps(args)])


def finish(proc: Forked, args: ChildArgs, timeout: float = CHILD_TIMEOUT) -> Child:
    """Wait for ``proc`` (killing it if it hangs), reap it and describe how it ended."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += f"\n[test] killed after hanging for {timeout} s"
    return Child(args, proc.pid, proc.returncode, stdout, stderr)


def run_child(args: ChildArgs) -> Child:
    return finish(spawn(args), args)


def with_args(args: ChildArgs, **changes: Any) -> ChildArgs:
    return cast(ChildArgs, {**args, **changes})


def load(url: str, run_id: str = RUN_ID) -> StoredRun:
    async def read() -> StoredRun:
        async with open_backend(url) as store:
            return await store.load_run(run_id)

    return asyncio.run(read())


def seqs_of(stored: StoredRun) -> list[int]:
    return [e.seq for e in stored.events]


def transcript(stored: StoredRun) -> list[dict[str, Any]]:
    """The run's messages; results of one parallel turn sorted by call id (order is free)."""
    messages = [m.model_dump(mode="json") for m in RunContext.from_stored(stored).messages]
    out: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] = []
    for message in [*messages, None]:
        if message is not None and message["role"] == "tool":
            tools.append(message)
            continue
        out.extend(sorted(tools, key=lambda m: m["call_id"]))
        tools = []
        if message is not None:
            out.append(message)
    return out


def in_parallel(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda job: job(), jobs))
