"""``python -m durable_agent``: the ``durable-agent`` command (`durable_agent.cli`)."""

from __future__ import annotations

import sys

from durable_agent.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
