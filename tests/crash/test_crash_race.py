"""Two processes continue one run whose owner was SIGKILLed: exactly one proceeds.

The dead owner is killed inside a tool call; both contenders then try the
takeover at once (in step, after both read the header naming the dead owner,
or in a free race), on every durable built-in store (``store_url``,
`tests/crash/conftest.py`). Only the store's compare-and-set picks the winner;
the loser is refused while the winner lives and makes no effect.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

import pytest

from durable_agent.fsm import RunState
from durable_agent.records import ToolFinishedEvent
from tests._barriers import wait_until
from tests.crash.child import LEASE_TTL, ChildArgs, read_ledger
from tests.crash.processes import (
    CHILD_TIMEOUT,
    RUN_ID,
    StoreUrl,
    finish,
    load,
    run_child,
    seqs_of,
    spawn,
    with_args,
)


@pytest.mark.parametrize(
    "in_step",
    [True, False],
    ids=["both-read-the-dead-owner-then-take-over", "free-race"],
)
def test_two_processes_continuing_one_dead_run_at_once_let_exactly_one_proceed(
    tmp_path: Path, in_step: bool, store_url: StoreUrl
) -> None:
    db, ledger, gate = store_url(tmp_path), tmp_path / "ledger", tmp_path / "gate"
    base = ChildArgs(store=db, run_id=RUN_ID, mode="start", ledger=str(ledger))
    dead = run_child(with_args(base, kill_in_tool="Kyiv"))
    assert dead.killed, dead.describe()

    # Both race to take over from the dead owner. With ``in_step`` each waits,
    # after reading the header that names the dead owner, until the other has
    # read it too: both then try the takeover with the same generation and
    # only the store's compare-and-set can pick one. The winner then waits
    # inside the Kyiv call until the gate file exists, holding the lease, so
    # the loser cannot find the run finished: it must be refused while the
    # winner lives.
    contender = with_args(base, mode="continue", gate={"city": "Kyiv", "file": str(gate)})
    if in_step:
        (tmp_path / "barrier").mkdir()
        contender = with_args(contender, barrier={"dir": str(tmp_path / "barrier"), "parties": 2})
    procs = [spawn(contender), spawn(contender)]
    try:
        # The loser stops on its own; the winner waits at the gate far longer than this.
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: any(p.poll() is not None for p in procs),
                awaiting="one contender to stop",
                timeout=CHILD_TIMEOUT,
            )
        first_done = [p.poll() is not None for p in procs]
    finally:
        gate.touch()
        children = [finish(p, contender) for p in procs]
    both = "\n".join(c.describe() for c in children)
    assert sum(first_done) == 1, f"exactly one contender should stop while the other runs:\n{both}"
    if in_step:
        arrived = {int(f.name) for f in (tmp_path / "barrier").iterdir()}
        assert arrived == {c.pid for c in children}, "both must have seen the dead owner"
    loser, winner = (children[0], children[1]) if first_done[0] else (children[1], children[0])
    lost, won = loser.result, winner.result
    assert lost is not None, loser.describe()
    assert won is not None, winner.describe()
    assert lost["error"] is not None, f"the loser was not refused:\n{both}"
    assert lost["error"]["type"] == "RunBusyError", loser.describe()
    assert str(winner.pid) in lost["error"]["message"], "the loser must be refused by the winner"
    assert won["error"] is None, winner.describe()
    assert won["state"] == RunState.DONE.value
    assert won["output"] == "Oslo, Rome, Lima and Kyiv are sunny"
    assert won["elapsed"] < LEASE_TTL / 2, "the winner waited for the dead owner's lease"
    assert lost["model_calls"] == 0
    assert lost["writes"] == 0

    entries = read_ledger(ledger)
    kyiv = Counter(e["pid"] for e in entries if e["kind"] == "tool" and e["city"] == "Kyiv")
    assert kyiv == Counter({dead.pid: 1, winner.pid: 1}), "Kyiv runs once per owner"
    assert not [e for e in entries if e["pid"] == loser.pid], "the loser made no effect"
    final = load(db)
    assert seqs_of(final) == list(range(1, final.header.seq + 1))
    assert final.header.state is RunState.DONE
    assert final.header.lease is None
    results = Counter(e.result.call_id for e in final.events if isinstance(e, ToolFinishedEvent))
    assert set(results.values()) == {1}, f"a call has two recorded results: {results}"
