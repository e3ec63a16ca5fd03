"""(e) ``import durable_agent`` time, and which heavy modules it pulls in.

Each sample is a fresh interpreter (``python -c``) timing
``import durable_agent`` with ``time.perf_counter`` (interpreter start-up
excluded); the median of the samples is compared with the target of 150 ms.
The same child reports whether ``openai``, ``anthropic`` and ``redis`` (vendor
SDKs that must load lazily) and ``aiosqlite`` (the SQLite driver, loaded when
the SQLite backend is first named) are in ``sys.modules`` afterwards. One
more child runs with ``-X importtime`` to name the largest imports.

Run alone: ``python benchmarks/bench_import.py [--quick]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _common import Row, gated, info, machine_summary, median, parse_options, print_table

NAME = "e) import"
TARGET_MS = 150.0
MUST_BE_LAZY = ("openai", "anthropic", "redis")
ALSO_REPORTED = ("aiosqlite", "durable_agent.backends.sqlite")

_CHILD = """
import sys, time, json
started = time.perf_counter()
import durable_agent
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "loaded": [m for m in %r if m in sys.modules]}))
"""

_NEUTRAL_CWD = Path(__file__).resolve().parent


def child(names: tuple[str, ...]) -> tuple[float, list[str]]:
    """(seconds to import durable_agent, which of ``names`` were loaded) in a new interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD % (names,)],
        capture_output=True,
        text=True,
        check=True,
        cwd=_NEUTRAL_CWD,
    )
    data = json.loads(result.stdout)
    return float(data["seconds"]), [str(n) for n in data["loaded"]]


def largest_imports(count: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Where ``import durable_agent`` spends its time, from ``-X importtime`` (ms).

    Returns the ``count`` dependency packages with the largest cumulative time
    and the ``count`` durable_agent modules with the largest time of their
    own (module body, excluding what they import). ``-X importtime`` prints
    each import after its children, indented by depth, so durable_agent's
    imports are the lines between the previous top-level entry (the
    interpreter's own start-up imports) and its own.
    """
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import durable_agent"],
        capture_output=True,
        text=True,
        check=True,
        cwd=_NEUTRAL_CWD,
    )
    dependencies: list[tuple[str, float]] = []
    own: list[tuple[str, float]] = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own_us, cumulative_us, raw_name = line[len("import time:") :].split("|")
        top_level = not raw_name.rstrip().startswith("   ")
        name = raw_name.strip()
        if top_level and name != "durable_agent":
            dependencies, own = [], []  # an interpreter start-up import, not ours
            continue
        if name.startswith("durable_agent"):
            own.append((name, int(own_us) / 1000))
        elif "." not in name:
            dependencies.append((name, int(cumulative_us) / 1000))
        if top_level:
            break
    dependencies.sort(key=lambda r: r[1], reverse=True)
    own.sort(key=lambda r: r[1], reverse=True)
    return dependencies[:count], own[:count]


def run(quick: bool) -> list[Row]:
    samples = 5 if quick else 9
    names = MUST_BE_LAZY + ALSO_REPORTED
    child(names)  # compile .pyc files and warm the page cache
    results = [child(names) for _ in range(samples)]
    loaded = {name for _, names_loaded in results for name in names_loaded}
    rows = [
        gated(
            NAME,
            f"import durable_agent (median of {samples} fresh interpreters)",
            median([seconds for seconds, _ in results]) * 1e3,
            " ms",
            TARGET_MS,
            ".0f",
        ),
    ]
    for name in MUST_BE_LAZY:
        rows.append(
            Row(
                NAME,
                f"{name} in sys.modules after import",
                "yes" if name in loaded else "no",
                "no",
                name not in loaded,
            )
        )
    for name in ALSO_REPORTED:
        rows.append(
            info(NAME, f"{name} in sys.modules after import", "yes" if name in loaded else "no")
        )
    dependencies, own = largest_imports(3)
    for name, ms in dependencies:
        rows.append(info(NAME, f"  dependency, cumulative (-X importtime): {name}", f"{ms:.0f} ms"))
    for name, ms in own:
        rows.append(info(NAME, f"  own module body, self (-X importtime): {name}", f"{ms:.0f} ms"))
    return rows


def main() -> None:
    options = parse_options(__doc__ or NAME)
    print(machine_summary())
    print_table(run(options.quick))


if __name__ == "__main__":
    main()
