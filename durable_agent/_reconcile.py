"""Reconciliation: ask a tool whether a call in flight at a crash took effect.

On resume, a call with an intent and no result may or may not have run
(DESIGN.md §3 rule 4). Before the tool step decides what to do with it, a tool
declared ``@tool(reconcile=fn)`` is asked: ``fn`` gets the call's idempotency
key and arguments and answers *landed* (with the result: recorded as the
call's result, nothing re-runs), *not landed* (the call runs now) or *unknown*
(an idempotent tool re-runs; an ``idempotent=False`` one waits for a human, as
without reconcile). The answer is a `ReconciledEvent`, appended together with
what it decides (the result, or the new intent) before anything runs.

The function runs inside the run's loop, so the run's deadline and a
cancellation interrupt it as they interrupt a tool; an exception it raises is
recorded as the run's failure and the call stays in doubt, so a resume after
the fix asks again. A call whose tool changed since its intent is not asked:
it waits for a human (`durable_agent._tool_identity`).
"""

from __future__ import annotations

from durable_agent._recording import ExecutionCore, Spec
from durable_agent._tool_identity import identity_change, intent_fields
from durable_agent.errors import RunFailedError
from durable_agent.fsm import RunState
from durable_agent.records import (
    ErrorInfo,
    FailedEvent,
    ReconciledEvent,
    ToolCallPart,
    ToolFinishedEvent,
    ToolResultMessage,
    ToolStartedEvent,
    encode_tool_result,
)
from durable_agent.run import RunContext
from durable_agent.tools import ReconcileContext, Reconciliation, Tool

__all__ = ["ReconcileStep"]


class ReconcileStep(ExecutionCore):
    """The part of TOOL_EXEC that asks reconcile functions about in-flight calls."""

    def _to_reconcile(self, ctx: RunContext) -> list[tuple[ToolCallPart, Tool, int]]:
        asks = []
        for call in ctx.pending_calls.values():
            attempts = ctx.call_attempts.get(call.id, 0)
            tool = self.tools.get(call.name)
            if (
                attempts == 0
                or call.id in self._live_intents
                or call.id in ctx.failed_calls
                or tool is None
                or tool.reconcile is None
                or f"{call.id}:in_doubt:{attempts}" in ctx.decisions
            ):
                continue
            answered = ctx.reconciled.get(call.id)
            if answered is not None and answered.attempt == attempts:
                continue  # asked already (it could not tell); the in-doubt rules apply
            intent = ctx.call_intents.get(call.id)
            if identity_change(call, intent, self.tools, self.engine.agent_version) is not None:
                continue
            asks.append((call, tool, attempts))
        return asks

    async def _reconcile(self, ctx: RunContext) -> None:
        """Ask every in-flight call's reconcile function, and record the answers in one append."""
        asks = self._to_reconcile(ctx)
        if not asks:
            return
        self._check_cancel()
        specs: list[Spec] = []
        live: set[str] = set()
        for call, tool, attempts in asks:
            key = f"{ctx.run_id}:{ctx.calls_seq}:{call.id}"
            try:
                async with self._keepalive():
                    answer = await tool.reconcile_call(
                        ReconcileContext(
                            run_id=ctx.run_id, call_id=call.id, tool_name=call.name,
                            idempotency_key=key, attempt=attempts,
                            arguments=dict(call.arguments),
                        )
                    )
                result = _result(call, answer)
            except Exception as exc:
                await self._reconcile_failed(ctx, call, exc)
            specs.append(
                (ReconciledEvent, None, {"call_id": call.id, "name": call.name,
                                         "attempt": attempts, "answer": answer.answer})
            )
            if result is not None:
                specs.append((ToolFinishedEvent, None, {"result": result}))
            elif answer.answer == "not_landed" or tool.idempotent:
                version = self.engine.agent_version
                specs.append(
                    (ToolStartedEvent, None, intent_fields(tool, call, attempts + 1, version))
                )
                live.add(call.id)
        await self._append(*specs)
        self._live_intents.update(live)

    async def _reconcile_failed(
        self, ctx: RunContext, call: ToolCallPart, error: Exception
    ) -> None:
        # Recorded without the call id: the call stays in doubt, and is asked about again.
        info = ErrorInfo.from_exception(error)
        await self._append(
            (FailedEvent, "fail", {"error": info, "failed_state": RunState.TOOL_EXEC})
        )
        raise RunFailedError(
            ctx.run_id, ctx.state.value, RunState.TOOL_EXEC.value,
            f"the reconcile function of tool {call.name!r} (call {call.id}) raised "
            f"{info.type}: {info.message}",
            next_step=getattr(error, "next_step", None),
        ) from error


def _result(call: ToolCallPart, answer: Reconciliation) -> ToolResultMessage | None:
    """The recorded result of a call that landed (`UnstorableValueError` if it cannot be kept)."""
    if answer.answer != "landed":
        return None
    value = answer.result
    content = value if isinstance(value, str) else encode_tool_result(value)
    return ToolResultMessage(call_id=call.id, name=call.name, content=content)
