"""Taking a run's lease, and telling whether its holder's process is gone."""

from __future__ import annotations

import os
from pathlib import Path

from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import RunBusyError
from durable_agent.records import Lease

__all__ = ["acquire_lease", "process_alive"]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name; Z is a zombie:
    # killed and not yet reaped, so it will never write again.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


async def acquire_lease(backend: Backend, run_id: str, owner: LeaseOwner, ttl: float) -> Lease:
    """Take the run's lease, taking over at once from a dead owner on this host.

    Raises `RunBusyError` when a live owner (or one on another host whose lease
    has not expired) holds it.
    """
    try:
        return await backend.acquire_lease(run_id, owner, ttl=ttl)
    except RunBusyError:
        header = await backend.get_run(run_id)
        held = header.lease
        if held is not None and held.host == owner.host and not process_alive(held.pid):
            # `takeover` is a compare-and-set on the generation: of two
            # processes racing here, one wins and the other gets RunBusyError.
            return await backend.acquire_lease(
                run_id, owner, ttl=ttl, takeover=header.lease_generation
            )
        # Released or expired meanwhile? Only the store's clock may say so: a
        # takeover judged by this host's clock could steal a live lease.
        return await backend.acquire_lease(run_id, owner, ttl=ttl)
