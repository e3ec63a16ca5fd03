"""``durable-agent ui``: serve the run inspector page (`durable_agent.ui`) with uvicorn.

A run the page decides or resumes is handed to the workers (the store is the
queue); ``--agent module:attr`` continues it in this process when no worker
claims it within ``--fleet-wait`` seconds.

Binds 127.0.0.1 by default. Any other address needs ``--token`` (or
``$DURABLE_AGENT_UI_TOKEN``): without one it refuses to start. On loopback a
token is generated when none is given; the URL printed carries it, as
Jupyter's does.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Final

import click

from durable_agent.cli import _store as store
from durable_agent.cli._app import CONTEXT, choose, cli, current_state, db_option
from durable_agent.errors import ConfigurationError
from durable_agent.ui._fleet import DEFAULT_FLEET_WAIT

__all__ = ["TOKEN_ENV", "ui"]

TOKEN_ENV: Final = "DURABLE_AGENT_UI_TOKEN"


@cli.command("ui", context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--agent",
    "agent_spec",
    metavar="MODULE:ATTR",
    help="the Agent that continues runs after a decision or a resume when no worker claims them",
)
@click.option(
    "--fleet-wait",
    type=click.FloatRange(min=0),
    default=DEFAULT_FLEET_WAIT,
    show_default=True,
    metavar="SECONDS",
    help="how long a handed-over run waits for a worker before --agent continues it (0: at once)",
)
@click.option("--read-only", is_flag=True, help="show runs, offer no action")
@click.option(
    "--token",
    metavar="TOKEN",
    help=f"the access token (default: ${TOKEN_ENV}, else generated; required off loopback)",
)
@click.option("--token-name", metavar="NAME", help="the token's name, recorded on decisions")
@click.option("--user", metavar="LABEL", help="who decides, recorded on each decision")
@db_option
def ui(
    host: str,
    port: int,
    agent_spec: str | None,
    fleet_wait: float,
    read_only: bool,
    token: str | None,
    token_name: str | None,
    user: str | None,
    db: str | None,
) -> int:
    """Serve the run inspector: watch, understand and decide runs in a browser."""
    current_state().ran = True
    from durable_agent.ui import INSTALL_HINT, create_app
    from durable_agent.ui._security import check_bind

    token = token or os.environ.get(TOKEN_ENV) or None
    try:
        check_bind(host, token)
    except ConfigurationError as exc:
        raise store.CliError(str(exc)) from None
    choice = choose(db)
    store.open_store(choice)  # a store that is not there fails now, not at the first page
    agent = store.load_agent(agent_spec) if agent_spec else None
    app = create_app(
        choice.url,
        agent=agent,
        fleet_wait=fleet_wait,
        read_only=read_only,
        token=token,
        token_name=token_name,
        user=user,
    )
    access = app.state.inspector.access
    try:
        import uvicorn
    except ImportError:
        raise store.CliError(f"the inspector needs uvicorn: {INSTALL_HINT}") from None
    # Open run pages hold a stream each (server-sent events): on Ctrl-C give them
    # a moment to end, then close them (the browser reconnects to the next server).
    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, log_level="warning",
        timeout_graceful_shutdown=2,
    )  # fmt: skip
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"durable-agent inspector on {choice.url} ({'read-only' if read_only else 'actions on'})",
        file=sys.stderr,
    )
    print(f"open: http://{shown}:{port}/?token={access.token}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one stops it
        server.run()
    return 0
