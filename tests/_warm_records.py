"""Imported by the test fork server (`tests._preloaded`): builds every record validator once.

The records build their pydantic validators on first use (``defer_build``), so
without this every forked child would build them again on its first run.
"""

from __future__ import annotations

from pydantic import BaseModel

import durable_agent
from durable_agent import _upcast, records


def _subclasses(cls: type[BaseModel]) -> list[type[BaseModel]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def build_all() -> int:
    """Load every public name and build every durable_agent record validator; how many."""
    for name in durable_agent.__all__:
        if not name.endswith("Backend") and name not in ("Worker", "RunRetry"):
            getattr(durable_agent, name)
    models = [m for m in _subclasses(BaseModel) if m.__module__.startswith("durable_agent.")]
    for model in models:
        model.model_rebuild()
    for adapter in (records._EVENT, records._HEADER, _upcast._VERSION_PROBE):
        adapter.rebuild()
    return len(models)


build_all()
