"""CPU of a ``durable-agent`` command from process start to exit, installs side by side.

Each sample is a fresh process running one command line; its user + system
CPU comes from ``os.wait4`` (interpreter start-up included: it is what a user
pays). The commands are ``--help`` and ``runs list`` on an empty SQLite store
made in a temporary folder. Several installs (``LABEL=PATH`` to a
``durable-agent`` executable) are run in alternated rounds, so load on the
machine falls on all of them alike; the medians and their ratio to the first
install are printed. Nothing is asserted.

Run with: ``python benchmarks/bench_cli_startup.py [--rounds 5]
[before=/work/main/.venv/bin/durable-agent] [after=.venv/bin/durable-agent]``
(default: this checkout's ``.venv`` alone).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

COMMANDS = (("--help",), ("runs", "list", "--db", "sqlite:///x.db"))


def cpu_seconds(argv: list[str], cwd: Path) -> float:
    """User + system CPU seconds of one run of ``argv``, to its exit."""
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stderr is not None
    error = process.stderr.read().decode()
    process.stderr.close()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({process.returncode}): {error}")
    return usage.ru_utime + usage.ru_stime


def make_store(folder: Path) -> None:
    """An empty SQLite store at ``folder/x.db`` (``runs list`` refuses a missing one)."""
    code = (
        "import asyncio\n"
        "from durable_agent.backends.sqlite import SqliteBackend\n"
        "async def main():\n"
        "    async with SqliteBackend('x.db') as store:\n"
        "        await store.list_runs()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=folder, check=True)


def _install(spec: str) -> tuple[str, str]:
    label, _, path = spec.partition("=")
    return label, str(Path(path).absolute())


def main() -> None:
    """Parse the installs, run the alternated rounds, print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("installs", nargs="*", metavar="LABEL=PATH")
    options = parser.parse_args()
    installs = [_install(spec) for spec in options.installs] or [
        ("this", str(Path(sys.prefix) / "bin" / "durable-agent"))
    ]
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()}",
        flush=True,
    )
    samples: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_store(folder)
        for _, path in installs:  # untimed: writes .pyc files, warms the page cache
            for command in COMMANDS:
                cpu_seconds([path, *command], folder)
        for _ in range(options.rounds):
            for command in COMMANDS:
                for label, path in installs:
                    key = (label, " ".join(command))
                    samples.setdefault(key, []).append(cpu_seconds([path, *command], folder))
    for command in COMMANDS:
        text = " ".join(command)
        first = statistics.median(samples[(installs[0][0], text)])
        for label, _ in installs:
            value = statistics.median(samples[(label, text)])
            print(
                f"durable-agent {text:<32} {label:<16} CPU median {value * 1000:7.1f} ms"
                f"  ({value / first:.2f}x {installs[0][0]})"
            )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
