"""`import durable_agent` loads only the package; each public name loads its own modules when named.

Each check runs in a fresh interpreter, since this test process has long since
imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Vendor SDKs and drivers that no plain `import durable_agent` may load, nor the
# first use of the facade with the scripted model and the memory store.
NEVER_ON_IMPORT = ("openai", "anthropic", "redis", "psycopg", "psycopg_pool", "aiosqlite", "httpx")


def loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are in ``sys.modules`` after running ``code`` in a new interpreter."""
    report = f"print(json.dumps([m for m in {names!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", f"import sys, json\n{code}\n{report}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_durable_agent_loads_no_submodule_and_no_pydantic() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, durable_agent\n"
            "print(sorted(m for m in sys.modules if m.startswith(('durable_agent.', 'pydantic'))))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "code",
    [
        "import durable_agent",
        "from durable_agent import Agent, Task, ScriptedModel, MemoryBackend\n"
        "Agent(ScriptedModel(['ok']), db=MemoryBackend()).do(Task('hi'))",
    ],
    ids=["import", "first-run-on-memory"],
)
def test_no_vendor_sdk_or_driver_is_loaded(code: str) -> None:
    assert loaded_after(code, NEVER_ON_IMPORT) == []


def test_naming_the_sqlite_backend_loads_its_driver_and_nothing_else() -> None:
    code = "from durable_agent import SqliteBackend"
    assert loaded_after(code, NEVER_ON_IMPORT) == ["aiosqlite"]


def test_every_name_in_all_resolves_and_is_listed_by_dir() -> None:
    import durable_agent

    for name in durable_agent.__all__:
        value = getattr(durable_agent, name)
        assert getattr(value, "__name__", name) == name, name
    assert set(durable_agent.__all__) <= set(dir(durable_agent))


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    import durable_agent

    with pytest.raises(AttributeError, match="no attribute 'Agnet'"):
        durable_agent.Agnet  # noqa: B018
