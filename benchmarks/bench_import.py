"""(e) ``import durable_agent`` time, and which heavy modules it pulls in.

Each sample is a fresh interpreter (``python -c``) timing
``import durable_agent`` with ``time.perf_counter`` (interpreter start-up
excluded); the median of the samples is compared with the target of 150 ms.
The same child then times the first use, ``from durable_agent import Agent,
Task, ScriptedModel``, which loads the facade, the records and pydantic, and
reports whether ``openai``, ``anthropic``, ``redis`` and ``psycopg`` (vendor
SDKs that must load lazily) and ``aiosqlite`` (the SQLite driver, loaded when
the SQLite backend is first named) are in ``sys.modules`` after both. Another
child times importing the pydantic names the records use alone, the floor of
the first use. Wall and CPU time are both printed. One more child runs with
``-X importtime`` on the first use to name the largest imports.

``.pyc`` files are written by a first, untimed child even when
``PYTHONDONTWRITEBYTECODE`` is set, as ``pip install`` writes them for a
wheel: without them every sample compiles durable_agent from source.

Run alone: ``python benchmarks/bench_import.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _common import Row, gated, info, median, run_script

NAME = "e) import"
TARGET_MS = 150.0
MUST_BE_LAZY = ("openai", "anthropic", "redis", "psycopg")
ALSO_REPORTED = ("aiosqlite", "durable_agent.backends.sqlite")

FIRST_USE = "from durable_agent import Agent, Task, ScriptedModel"
_CHILD = """
import sys, time, json
started, cpu_started = time.perf_counter(), time.process_time()
import durable_agent
imported, cpu_imported = time.perf_counter(), time.process_time()
%s
used, cpu_used = time.perf_counter(), time.process_time()
print(json.dumps({"import": imported - started, "first_use": used - started,
                  "import_cpu": cpu_imported - cpu_started, "first_use_cpu": cpu_used - cpu_started,
                  "loaded": [m for m in %r if m in sys.modules]}))
"""
_PYDANTIC_CHILD = """
import time, json
started, cpu_started = time.perf_counter(), time.process_time()
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, WrapValidator
print(json.dumps({"floor": time.perf_counter() - started,
                  "floor_cpu": time.process_time() - cpu_started}))
"""

_NEUTRAL_CWD = Path(__file__).resolve().parent


def child(
    names: tuple[str, ...], *, env: dict[str, str] | None = None
) -> tuple[dict[str, float], list[str]]:
    """Seconds, wall and CPU, to ``import durable_agent`` and to the end of its
    first use, and which of ``names`` were loaded, in a new interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD % (FIRST_USE, names)],
        capture_output=True,
        text=True,
        check=True,
        cwd=_NEUTRAL_CWD,
        env=env,
    )
    data = json.loads(result.stdout)
    loaded = [str(n) for n in data.pop("loaded")]
    return {key: float(value) for key, value in data.items()}, loaded


def pydantic_child() -> dict[str, float]:
    """Seconds, wall and CPU, to import pydantic's model machinery alone in a new interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", _PYDANTIC_CHILD],
        capture_output=True,
        text=True,
        check=True,
        cwd=_NEUTRAL_CWD,
    )
    return {key: float(value) for key, value in json.loads(result.stdout).items()}


def largest_imports(count: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Where the first use of durable_agent spends its time, from ``-X importtime`` (ms).

    Returns the ``count`` dependency packages with the largest cumulative time
    and the ``count`` durable_agent modules with the largest time of their
    own (module body, excluding what they import). ``-X importtime`` prints
    each import after its children, indented by depth, so durable_agent's
    imports are the lines after the last top-level entry before the package
    itself (the interpreter's own start-up imports), including the modules its
    lazy names load at top level afterwards.
    """
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", FIRST_USE],
        capture_output=True,
        text=True,
        check=True,
        cwd=_NEUTRAL_CWD,
    )
    dependencies: list[tuple[str, float]] = []
    own: list[tuple[str, float]] = []
    started = False
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own_us, cumulative_us, raw_name = line[len("import time:") :].split("|")
        top_level = not raw_name.rstrip().startswith("   ")
        name = raw_name.strip()
        if not started and top_level:
            if name != "durable_agent":
                dependencies, own = [], []  # an interpreter start-up import, not ours
                continue
            started = True
        if name.startswith("durable_agent"):
            own.append((name, int(own_us) / 1000))
        elif "." not in name:
            dependencies.append((name, int(cumulative_us) / 1000))
    dependencies.sort(key=lambda r: r[1], reverse=True)
    own.sort(key=lambda r: r[1], reverse=True)
    return dependencies[:count], own[:count]


def run(quick: bool) -> list[Row]:
    samples = 5 if quick else 9
    names = MUST_BE_LAZY + ALSO_REPORTED
    # Write .pyc files and warm the page cache.
    writes_bytecode = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    child(names, env=writes_bytecode)
    timings: dict[str, list[float]] = {}
    loaded: set[str] = set()
    for _ in range(samples):  # alternated, so load on the machine hits both alike
        sample, names_loaded = child(names)
        sample |= pydantic_child()
        loaded.update(names_loaded)
        for key, seconds in sample.items():
            timings.setdefault(key, []).append(seconds)

    def median_ms(key: str) -> float:
        return median(timings[key]) * 1e3

    rows = [
        gated(
            NAME,
            f"import durable_agent (median of {samples} fresh interpreters)",
            median_ms("import"),
            " ms",
            TARGET_MS,
            ".0f",
        ),
        # CPU time beside wall time: on a loaded machine the wall time is
        # mostly waiting for a core, and the CPU time is what the import costs.
        info(NAME, "  import durable_agent, CPU", f"{median_ms('import_cpu'):.0f} ms"),
        info(
            NAME,
            f"  then first use: {FIRST_USE} (cumulative)",
            f"{median_ms('first_use'):.0f} ms (CPU {median_ms('first_use_cpu'):.0f} ms)",
        ),
        info(
            NAME,
            "  floor of the first use: the pydantic names the records import",
            f"{median_ms('floor'):.0f} ms (CPU {median_ms('floor_cpu'):.0f} ms)",
        ),
    ]
    for name in MUST_BE_LAZY:
        rows.append(
            Row(
                NAME,
                f"{name} in sys.modules after first use",
                "yes" if name in loaded else "no",
                "no",
                name not in loaded,
            )
        )
    for name in ALSO_REPORTED:
        rows.append(
            info(NAME, f"{name} in sys.modules after first use", "yes" if name in loaded else "no")
        )
    dependencies, own = largest_imports(3)
    for name, ms in dependencies:
        rows.append(info(NAME, f"  dependency, cumulative (-X importtime): {name}", f"{ms:.0f} ms"))
    for name, ms in own:
        rows.append(info(NAME, f"  own module body, self (-X importtime): {name}", f"{ms:.0f} ms"))
    return rows


def main() -> None:
    run_script(__doc__ or NAME, run)


if __name__ == "__main__":
    main()
