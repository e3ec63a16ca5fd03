"""The ``durable-agent`` command: inspect, clean up, decide, resume and draw runs.

Its commands:

    durable-agent runs list [--state WAITING] [--session ID] [--user ID] [--since 7d] [--json]
    durable-agent runs show RUN_ID            # the timeline of its events
    durable-agent runs follow RUN_ID [--json] # the timeline, live, until it rests
    durable-agent runs export RUN_ID -o run.json
    durable-agent runs import run.json
    durable-agent runs delete RUN_ID
    durable-agent runs prune --older-than 30d [--state DONE] [--dry-run]
    durable-agent runs resume RUN_ID --agent myapp.agents:support
    durable-agent runs approve RUN_ID REQUIREMENT_ID [--agent myapp.agents:support]
    durable-agent runs reject RUN_ID REQUIREMENT_ID [--reason TEXT]
    durable-agent runs cancel RUN_ID [--reason TEXT]
    durable-agent worker --agent myapp.agents:support [--concurrency 8] [--queue NAME]
    durable-agent runs fork RUN_ID --at SEQ [--new-id ID] [--agent myapp.agents:support]
    durable-agent diagram [--run RUN_ID] [--format mermaid|dot|svg|png] [-o FILE]
    durable-agent ui [--host 127.0.0.1] [--port 8765] [--agent module:attr] [--read-only]
    durable-agent demo
    durable-agent crashtest myapp.agents:support "a task" [--kill-points all|1,3]
    durable-agent migrate [--dry-run] [--json]

The store is ``--db URL`` (on the command or before it), else the
``DURABLE_AGENT_DB`` environment variable, else ``sqlite:///durable.db``.
Errors are one line on stderr with exit status 1 (2 for bad usage); ``--debug``
shows the traceback. ``--json`` prints structured data on every command that
reports something.

The package, one module per command group:

- `durable_agent.cli._app`: the root group `cli`, the options and helpers
  every command shares (``--db``, ``--json``, opening the store, a run that is
  not there, what to do next) and `main`, which turns failures into one line;
- `durable_agent.cli.runs`: the ``runs`` group, its commands in
  `durable_agent.cli.runs_read` (list, show, export),
  `durable_agent.cli.runs_write` (import, delete, prune) and
  `durable_agent.cli.decide` (resume, approve, reject, cancel) and
  `durable_agent.cli.fork` (fork);
- `durable_agent.cli.worker`, `durable_agent.cli.diagram`, `durable_agent.cli.ui`
  (the inspector page, `durable_agent.ui`), `durable_agent.cli.demo`,
  `durable_agent.cli.crashtest` and `durable_agent.cli.migrate`: one command each;
- `durable_agent.cli._store` (store URLs, durations, the export document,
  loading an agent, recording a decision) and `durable_agent.cli._output`
  (printing), which know nothing of click. What ``runs list`` and ``runs
  show`` show (and ``--json`` prints) is derived by `durable_agent._inspect`
  and `durable_agent._timeline`, which the inspector page reads too.

A new command group (``worker``, ``ui``) is a module here that defines it
with ``@cli.group(cls=Group, context_settings=CONTEXT)`` (or a single
``@cli.command``), takes ``--db`` through `db_option` and `choose`, runs its
coroutine with `run_command`, raises `durable_agent.cli._store.CliError` for a
user's mistake, and has an entry in `durable_agent.cli._app.COMMANDS` (a
``runs`` command: `durable_agent.cli.runs.RUN_COMMANDS`): its module and its
one-line help, in the order help lists them. A command's module is imported
only when that command runs, so ``--help`` and ``runs list`` import neither
the agent nor the engine. Like the rest of the command line it sits on top of
the library: nothing outside ``durable_agent.cli`` imports it
(tests/unit/test_layers.py checks).
"""

from __future__ import annotations

from durable_agent.cli._app import PROG, cli, main

__all__ = ["PROG", "cli", "main"]
