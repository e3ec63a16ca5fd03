"""Store URLs → backends: ``sqlite:///runs.db``, ``memory://``.

Backends are imported only when their scheme is opened, so a missing driver
costs nothing until it is asked for.
"""

from __future__ import annotations

import importlib
from urllib.parse import parse_qs, urlsplit

from durable_agent.backend import Backend
from durable_agent.errors import ConfigurationError

__all__ = ["known_schemes", "open_backend"]

_SCHEMES: dict[str, str] = {
    "memory": "durable_agent.backends.memory:MemoryBackend",
    "sqlite": "durable_agent.backends.sqlite:SqliteBackend",
}


def known_schemes() -> tuple[str, ...]:
    """The URL schemes `open_backend` understands."""
    return tuple(sorted(_SCHEMES))


def open_backend(
    url: str, *, session_id: str | None = None, user_id: str | None = None
) -> Backend:
    """Build the backend a store URL names (no I/O until first use).

    ``sqlite:///runs.db`` is relative to the working directory,
    ``sqlite:////abs/runs.db`` absolute; ``memory://`` keeps runs in this
    process only. Query parameters are passed as keyword options, for example
    ``sqlite:///runs.db?synchronous=NORMAL``.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a store URL must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    target = _SCHEMES.get(parts.scheme)
    if target is None:
        raise ConfigurationError(
            f"unknown store scheme {parts.scheme!r} in {url!r}; known schemes: "
            f"{', '.join(known_schemes())}"
        )
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if parts.scheme == "memory":
        backend = cls(session_id=session_id, user_id=user_id, **options)
    else:
        # urlsplit keeps the leading slash: sqlite:///runs.db → "/runs.db" (relative)
        # and sqlite:////abs/runs.db → "//abs/runs.db" (absolute).
        if parts.netloc:
            raise ConfigurationError(
                f"{url!r}: a sqlite URL has no host; use sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        path = parts.path[1:]
        if not path:
            raise ConfigurationError(f"{url!r} names no database file")
        backend = cls(path, session_id=session_id, user_id=user_id, **options)
    if not isinstance(backend, Backend):
        raise ConfigurationError(f"{target} is not a Backend")
    return backend
