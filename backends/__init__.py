"""Built-in stores, installed as ``durable_agent.backends``.

Each module imports only `durable_agent.backend`, `durable_agent.records`,
`durable_agent.errors` and its driver: the same path a custom backend takes.

``from durable_agent.backends import SqliteBackend`` works for every built-in
store; each loads its module (and its driver) only when first named.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from durable_agent.backends.jsonfile import JsonFileBackend
    from durable_agent.backends.memory import MemoryBackend
    from durable_agent.backends.postgres import PostgresBackend
    from durable_agent.backends.redis import RedisBackend
    from durable_agent.backends.sqlite import SqliteBackend

__all__ = ["JsonFileBackend", "MemoryBackend", "PostgresBackend", "RedisBackend", "SqliteBackend"]

_MODULES = {
    "JsonFileBackend": "jsonfile",
    "MemoryBackend": "memory",
    "PostgresBackend": "postgres",
    "RedisBackend": "redis",
    "SqliteBackend": "sqlite",
}


def __getattr__(name: str) -> Any:
    # Lazy, so naming SqliteBackend never imports the redis client.
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_agent.backends' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
