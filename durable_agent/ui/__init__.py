"""The run inspector: a web page to watch, understand and decide runs.

    durable-agent ui --db sqlite:///runs.db [--agent myapp.agents:support]

or, inside your own Starlette or FastAPI service::

    from durable_agent.ui import create_app
    app.mount("/runs", create_app("sqlite:///runs.db", token="…", user="ops"))

The page lists runs (state counts, filters, search, paging), shows one run's
timeline with crash and takeover markers, its usage and its path, follows it
live, and decides what a WAITING run waits for, cancels and resumes runs. It
reads the store through `durable_agent._inspect`, the module the command line
uses, so both show the same data.

Needs the ``ui`` extra (``pip install 'durable-agent[ui]'``): Starlette,
uvicorn and Jinja2, imported only here, so ``import durable_agent`` stays
quick. Every asset ships in the package: no CDN, it works offline.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from durable_agent.errors import ConfigurationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from durable_agent.agent import Agent
    from durable_agent.backend import Backend

__all__ = ["INSTALL_HINT", "create_app"]

INSTALL_HINT: Final = "pip install 'durable-agent[ui]'"


def _require_extra() -> None:
    for module, package in (
        ("starlette", "starlette"),
        ("jinja2", "jinja2"),
        ("python_multipart", "python-multipart"),
    ):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(f"the inspector needs {package}: {INSTALL_HINT}") from exc


def create_app(
    db: str | Backend,
    *,
    agent: Agent | None = None,
    read_only: bool = False,
    token: str | None = None,
    token_name: str | None = None,
    user: str | None = None,
    poll_seconds: float = 1.0,
    fleet_wait: float | None = None,
) -> Starlette:
    """The inspector as an ASGI app over the store ``db`` (a URL or an open `Backend`).

    Every request needs ``token`` (given once as ``?token=…``, then kept in a
    cookie, or as ``Authorization: Bearer``); when None one is generated, read
    it from ``app.state.inspector.access.token``. A decided or resumed run
    is handed to the workers (the store is the queue); ``agent`` continues
    it in this process when no worker claims it within ``fleet_wait``
    seconds (default 3; 0: at once, never waiting for a worker). Without an
    agent a worker must continue it. ``read_only`` turns every action off.
    Decisions and resumes record ``user`` (else ``token_name``) as who asked.
    ``poll_seconds`` bounds how long a live run page waits for news (it
    follows the run over server-sent events) and paces the list's refresh.
    """
    _require_extra()
    if fleet_wait is not None and (
        isinstance(fleet_wait, bool) or not isinstance(fleet_wait, int | float) or fleet_wait < 0
    ):
        raise ConfigurationError(
            f"create_app(fleet_wait=...) must be seconds >= 0, got {fleet_wait!r}"
        )
    from durable_agent.ui._app import Inspector, build_app
    from durable_agent.ui._fleet import DEFAULT_FLEET_WAIT
    from durable_agent.ui._security import Access

    access = Access(token=token, name=token_name) if token else Access(name=token_name)
    inspector = Inspector(
        db,
        agent=agent,
        read_only=read_only,
        access=access,
        user=user,
        poll_seconds=poll_seconds,
        fleet_wait=DEFAULT_FLEET_WAIT if fleet_wait is None else fleet_wait,
    )
    return build_app(inspector)
