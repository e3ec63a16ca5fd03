"""The one object the engine tells what happens, and the cheap default it gets.

Each execution of a run (one *segment*: a process's stretch of work on the
run) asks `segment_hook` for its hook once, when it is built. Without
telemetry configured that is a plain `Hook`: its per-transition methods do
nothing and import nothing, and only the once-per-segment methods log (INFO
for a start, a rest, a takeover and a recovery; WARNING for a run left
stranded). With OpenTelemetry configured, or DEBUG logging enabled for
``durable_agent``, it is the live hook of `durable_agent.telemetry._live`.

The engine calls it at these points and nowhere else: `loaded` (the stored
run, before a segment begins on it), `begin` / `end` (the segment),
`append_start` / `appended` / `append_failed` (each store append; retries,
waits, cancellations and failures are read from the events appended), `chat`
(one model attempt) and `tool` (one tool call).

Two parts built on top of the engine tell the hook more, through context
variables, so the engine itself stays unaware of them: a stream reads
`CURRENT_CHAT` once per model attempt and reports each chunk it relays
(`Call.chunk`); a `durable_agent.worker.Worker` sets `WORKER_CLAIM` in the task
driving a run it claimed, and the segment's span says which worker, queue and
kind of claim. Without telemetry both cost one context-variable read.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from durable_agent.fsm import RunState
from durable_agent.telemetry import _state

if TYPE_CHECKING:
    from durable_agent.models import ChatModel, ModelResponse
    from durable_agent.records import Event, Lease, StoredRun, ToolCallPart
    from durable_agent.run import RunContext

__all__ = [
    "CURRENT_CHAT", "WORKER_CLAIM", "Call", "ClaimKind", "Hook", "WorkerClaim", "log_extra",
    "segment_hook",
]

_log = logging.getLogger("durable_agent.engine")

_AT_REST = frozenset({RunState.DONE, RunState.ERROR, RunState.WAITING, RunState.CANCELLED})
_MID_EFFECT = frozenset({RunState.MODEL_CALL, RunState.TOOL_EXEC})


def log_extra(run_id: str, seq: int | None, state: RunState | None, **more: Any) -> dict[str, Any]:
    """The ``extra`` of every record the library logs: run id, seq and state (None if unknown)."""
    return {
        "run_id": run_id,
        "seq": seq,
        "state": state.value if state is not None else None,
        **more,
    }


class Call:
    """One model attempt or tool call, as a context manager around it (this one does nothing).

    Its ``__exit__`` sees the exception the call raised, if any.
    """

    __slots__ = ()

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def answered(self, response: ModelResponse) -> None:
        """The model answered (a chat call)."""

    def returned(self, content: str, *, is_error: bool = False) -> None:
        """The tool returned ``content`` (a tool call); ``is_error`` for an error text."""

    def chunk(self, text: str) -> None:
        """A streamed chat attempt received a chunk of ``text`` (a stream calls it)."""


_NO_CALL = Call()

CURRENT_CHAT: ContextVar[Call | None] = ContextVar("durable_agent_chat", default=None)
"""The live chat attempt in progress in this task, if telemetry records it (else None)."""

ClaimKind = Literal["pending", "takeover", "retry"]
"""How a worker came to drive a run: claimed unheld, taken over, or retried from ERROR."""


@dataclass(frozen=True, slots=True)
class WorkerClaim:
    """What a worker tells the segment it drives: who it is, and how it got the run.

    Set in `WORKER_CLAIM` by the task driving ``run_id``; any other run (an
    agent run inside one of its tools) does not see it as its own.
    """

    run_id: str
    worker_id: str
    queue: str
    kind: ClaimKind
    stopping: Callable[[], bool]
    """Whether the worker is stopping (a run it leaves unfinished is handed back)."""
    previous_owner: str | None = None
    previous_generation: int | None = None
    """The lease a takeover took (its owner id and generation)."""
    retry: int | None = None
    retries: int | None = None
    """For a run-level retry: which one, and how many the policy allows."""


WORKER_CLAIM: ContextVar[WorkerClaim | None] = ContextVar(
    "durable_agent_worker_claim", default=None
)


class Hook:
    """What the engine tells telemetry about one segment; this base only logs per segment."""

    __slots__ = ("_began", "agent", "run_id")

    def __init__(self, run_id: str, agent: str) -> None:
        self.run_id = run_id
        self.agent = agent
        self._began = False

    # -- once per segment ---------------------------------------------------------

    def loaded(self, stored: StoredRun) -> None:
        """The run as stored, read before a segment begins on it (or for inspection)."""

    def begin(self, ctx: RunContext | None, lease: Lease | None) -> str | None:
        """A segment begins: ``ctx`` None for a new run about to be stored, else the run acquired.

        Returns the W3C ``traceparent`` to store with the segment's first write
        (so the next segment can link to this one), or None.
        """
        self._began = True
        if ctx is None:
            if _log.isEnabledFor(logging.INFO):
                _log.info("run %s of agent %r starts", self.run_id, self.agent,
                          extra=log_extra(self.run_id, 0, RunState.PENDING, agent=self.agent))
            return None
        if _log.isEnabledFor(logging.INFO):
            extra = log_extra(self.run_id, ctx.seq, ctx.state, agent=self.agent)
            if ctx.state in _MID_EFFECT:
                _log.info("run %s: taking over in %s at seq %d (its last process stopped "
                          "mid-step)", self.run_id, ctx.state.value, ctx.seq, extra=extra)
            elif ctx.state is RunState.ERROR:
                _log.info("run %s: recovering from ERROR (it failed in %s) at seq %d",
                          self.run_id, getattr(ctx.failed_state, "value", "?"), ctx.seq,
                          extra=extra)
            else:
                _log.info("run %s continues in %s at seq %d", self.run_id, ctx.state.value,
                          ctx.seq, extra=extra)
        return None

    def end(self, ctx: RunContext | None, error: BaseException | None = None) -> None:
        """The segment ends (its lease is given up, or it never got one). Idempotent."""
        if not self._began:
            return
        self._began = False
        _log_end(self.run_id, self.agent, ctx, error)

    # -- per append and per call: nothing, unless live ---------------------------------

    def append_start(self) -> float | None:
        """An append is about to be sent; returns a mark for `appended` / `append_failed`."""
        return None

    def appended(
        self, mark: float | None, ctx: RunContext, events: Sequence[Event], released: bool
    ) -> None:
        """``events`` are stored and applied to ``ctx``; ``released``: the lease went with them."""

    def append_failed(
        self, mark: float | None, events: Sequence[Event], error: BaseException
    ) -> None:
        """The append of ``events`` raised ``error`` (nothing of it applied)."""

    def chat(self, ctx: RunContext, model: ChatModel, attempt: int) -> Call:
        """One model attempt is about to start (its intent is stored)."""
        return _NO_CALL

    def tool(self, ctx: RunContext, call: ToolCallPart, attempt: int) -> Call:
        """One tool call is about to start (its intent is stored)."""
        return _NO_CALL


def _log_end(run_id: str, agent: str, ctx: RunContext | None, error: BaseException | None) -> None:
    if ctx is None:
        return
    state = ctx.state
    if state in _AT_REST:
        if _log.isEnabledFor(logging.INFO):
            _log.info("run %s rests in %s at seq %d", run_id, state.value, ctx.seq,
                      extra=log_extra(run_id, ctx.seq, state, agent=agent))
    elif _handed_back(run_id):
        pass  # a stopping worker leaves it for the fleet, and logs that itself
    elif _log.isEnabledFor(logging.WARNING):
        why = f" after {type(error).__name__}" if error is not None else ""
        _log.warning(
            "run %s is stranded in %s at seq %d%s: no process drives it until it is "
            "continued (agent.continue_run_async(run_id=...)) or its lease expires",
            run_id, state.value, ctx.seq, why,
            extra=log_extra(run_id, ctx.seq, state, agent=agent),
        )


def _handed_back(run_id: str) -> bool:
    claim = WORKER_CLAIM.get()
    return claim is not None and claim.run_id == run_id and claim.stopping()


def segment_hook(run_id: str, agent: str) -> Hook:
    """The hook for one new segment of ``run_id``, chosen once for the segment.

    The live hook when `durable_agent.telemetry.configure` enabled telemetry,
    when OpenTelemetry is imported and a tracer or meter provider is set, or
    when ``durable_agent`` logs at DEBUG; this cheap `Hook` otherwise. It never
    imports OpenTelemetry itself: a provider can only be set by code that did.
    """
    if _state.enabled is None:
        if "opentelemetry" not in sys.modules and not _log.isEnabledFor(logging.DEBUG):
            return Hook(run_id, agent)
    elif not _state.enabled and not _log.isEnabledFor(logging.DEBUG):
        return Hook(run_id, agent)
    instruments = _state.instruments()
    if instruments is None and not _log.isEnabledFor(logging.DEBUG):
        return Hook(run_id, agent)
    from durable_agent.telemetry._live import LiveHook

    return LiveHook(run_id, agent, instruments)
