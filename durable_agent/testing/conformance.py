"""The Backend conformance suite: subclass `BackendConformance`, give it a ``backend``.

A custom store is correct when it passes the same tests as the built-in ones:

```python
from collections.abc import AsyncIterator
from pathlib import Path

from durable_agent.testing.conformance import BackendConformance


class TestMyBackend(BackendConformance):
    async def backend(self, tmp_path: Path) -> AsyncIterator[MyBackend]:
        store = MyBackend(tmp_path / "runs")   # set up: a fresh, empty store
        yield store
        await store.close()                    # clean up
```

``backend`` is an async generator method, written like a pytest yield
fixture: its parameters name pytest fixtures (``tmp_path`` above, or one of
your own), it yields one fresh empty store, and the code after ``yield`` cleans
up. No pytest plugin is needed: every test is a plain function that runs the
set-up, the test body and the clean-up on **one** event loop of its own
(`asyncio.run`), so stores whose connections are bound to a loop (redis-py,
asyncpg, psycopg) work as they are.

Optional features are `Capability` values the backend declares; a test of a
missing one is skipped with the reason, never failed. Two optional hooks let
the suite test more:

* ``reopen(store)`` returns a second store object over the same storage, as
  another process would open it: it enables the durability and cross-process
  tests (with the ``DURABLE`` / ``CROSS_PROCESS`` capabilities).
* ``damage(store, run_id, seq)`` overwrites the stored event ``seq`` of a run
  (or its header when ``seq`` is None) with bytes that are not a valid record:
  it enables the corrupted-data tests, and the check that a listing reports
  a damaged header in `RunPage.unreadable` instead of hiding it.
* ``mark_newer_version(store, run_id)`` makes a run's stored header one a
  newer durable-agent wrote (``schema_version`` above this one's): listings
  must report it as ``"newer_version"``.

The groups (`RunTests`, `AppendTests`, `LeaseTests`, `ListTests`,
`DeleteTests`, `PayloadTests`, `LifecycleTests`, `DurabilityTests`,
`DamageTests`, `UnreadableTests`, `MigrationTests`, and for workers `ClaimTests`,
`AtomicQueueLimitTests`, `WorkerLivenessTests`, `WakeUpTests`, and for following
`RelayTests`) may also be
subclassed one by one. A backend that implements no claim method passes
`ClaimTests` through the portable fallback of `Backend.claim_runs`.
`MigrationTests` runs only for a backend declaring `Capability.MIGRATE`.
"""

from __future__ import annotations

from durable_agent.testing._conformance_base import (
    BackendTestCase,
    at,
    created,
    header,
    new_run,
    step,
)
from durable_agent.testing._conformance_claims import (
    AtomicQueueLimitTests,
    ClaimTests,
    WakeUpTests,
    WorkerLivenessTests,
)
from durable_agent.testing._conformance_leases import (
    DamageTests,
    DurabilityTests,
    LeaseTests,
    ListTests,
)
from durable_agent.testing._conformance_migrate import MigrationTests
from durable_agent.testing._conformance_relay import RelayTests
from durable_agent.testing._conformance_runs import (
    AppendTests,
    DeleteTests,
    LifecycleTests,
    PayloadTests,
    RunTests,
)
from durable_agent.testing._conformance_unreadable import UnreadableTests

__all__ = [
    "AppendTests",
    "AtomicQueueLimitTests",
    "BackendConformance",
    "BackendTestCase",
    "ClaimTests",
    "DamageTests",
    "DeleteTests",
    "DurabilityTests",
    "LeaseTests",
    "LifecycleTests",
    "ListTests",
    "MigrationTests",
    "PayloadTests",
    "RelayTests",
    "RunTests",
    "UnreadableTests",
    "WakeUpTests",
    "WorkerLivenessTests",
    "at",
    "created",
    "header",
    "new_run",
    "step",
]


class BackendConformance(
    RunTests,
    AppendTests,
    LeaseTests,
    ListTests,
    DeleteTests,
    PayloadTests,
    LifecycleTests,
    DurabilityTests,
    DamageTests,
    UnreadableTests,
    ClaimTests,
    AtomicQueueLimitTests,
    WorkerLivenessTests,
    WakeUpTests,
    RelayTests,
    MigrationTests,
):
    """The whole contract. Subclass it as ``Test...`` and define ``backend``."""
