"""The rules every backend decides writes by: lease acquisition and checked appends.

`durable_agent.backend` re-exports these names: backends import them from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from durable_agent.errors import ConcurrentUpdateError, LeaseLostError, RunBusyError
from durable_agent.records import Event, Lease, RunHeader

if TYPE_CHECKING:
    from durable_agent.backend import LeaseOwner

__all__ = ["check_append", "check_lease_acquire"]


def check_lease_acquire(
    header: RunHeader, owner: LeaseOwner, *, ttl: float, takeover: int | None, now: float
) -> Lease:
    """Decide an acquisition on ``header`` and return the new lease, or raise `RunBusyError`.

    Granted when no lease is held, the held one expired, ``takeover`` equals the
    held generation, or the held lease is ``owner``'s own (DESIGN.md §3 rule 5:
    a process may always take back what its own owner id holds, for example
    after a release that failed or a write that landed after its caller was
    cancelled). Every grant increments the generation, so the previous holder
    of the same owner is fenced: its next append raises `LeaseLostError`. The
    engine itself never lets two executions of one process hold a run at once
    (it refuses the second before asking the store).
    """
    held = header.lease
    if (
        held is not None
        and held.expires_at > now
        and takeover != header.lease_generation
        and held.owner != owner.id
    ):
        raise RunBusyError(header.run_id, held.owner, held.expires_at - now)
    return Lease(
        owner=owner.id,
        host=owner.host,
        pid=owner.pid,
        generation=header.lease_generation + 1,
        expires_at=now + ttl,
        ttl=ttl,
        cancel_requested=header.cancel_requested,
    )


def check_append(
    header: RunHeader, events: Sequence[Event], *, expected_seq: int, lease: Lease
) -> None:
    """Raise unless ``events`` may be appended to the run ``header`` describes."""
    held = header.lease
    if (
        held is None
        or header.lease_generation != lease.generation
        or held.owner != lease.owner
    ):
        holder = held.owner if held is not None else "nobody"
        raise LeaseLostError(
            header.run_id,
            f"lease generation {lease.generation} of {lease.owner} is no longer held "
            f"(now generation {header.lease_generation}, held by {holder}); this writer "
            "must stop",
        )
    if header.seq != expected_seq:
        raise ConcurrentUpdateError(
            header.run_id,
            f"expected seq {expected_seq} but the store is at {header.seq}; another writer "
            "appended first, reload the run",
        )
    for offset, event in enumerate(events, start=1):
        if event.seq != expected_seq + offset:
            raise ConcurrentUpdateError(
                header.run_id,
                f"event {offset} of the append has seq {event.seq}, "
                f"expected {expected_seq + offset}",
            )
