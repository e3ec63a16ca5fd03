"""The tool step: plan each pending call from its tool and the human decisions, run it, record it.

A call runs only after its intent is durable (rule 1), and its result is
appended before anything else starts (rule 2). A call with an intent but no
result that this execution did not start may have run before a crash: it runs
again under the same idempotency key, unless its tool is ``idempotent=False``,
in which case the run waits for a human (rule 4). So does one whose tool is
gone or changed since its intent (`durable_agent._tool_identity`); a tool with
a reconcile function is asked first (`durable_agent._reconcile`). Tools that
need a decision first (confirmation, external result, user input) make the run
WAITING.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from durable_agent._reconcile import ReconcileStep
from durable_agent._recording import Spec
from durable_agent._tool_identity import identity_change, intent_fields
from durable_agent.errors import (
    RunFailedError,
    ToolArgumentsError,
    ToolRetry,
    UnstorableValueError,
)
from durable_agent.fsm import RunState
from durable_agent.records import (
    ErrorInfo,
    FailedEvent,
    JSONValue,
    RequirementRecord,
    ToolCallPart,
    ToolFinishedEvent,
    ToolResultMessage,
    ToolStartedEvent,
    TransitionEvent,
    WaitingEvent,
    escape_surrogates,
    validator_of,
)
from durable_agent.run import RunContext
from durable_agent.tools import ToolContext

__all__ = ["ToolStep"]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to do now with one pending tool call."""

    action: Literal["run", "record", "wait"]
    call: ToolCallPart
    arguments: Mapping[str, JSONValue] | None = None
    result: ToolResultMessage | None = None
    requirement: RequirementRecord | None = None


class ToolStep(ReconcileStep):
    """How an execution performs TOOL_EXEC."""

    def _plan(self, ctx: RunContext, call: ToolCallPart) -> _Plan:
        """Decide what to do with one pending call from the tool and the recorded decisions."""
        tool = self.tools.get(call.name)
        attempts = ctx.call_attempts.get(call.id, 0)
        # An intent without a result, not written by this execution and not
        # followed by a recorded failure: the call may or may not have run.
        in_doubt = (
            attempts > 0 and call.id not in self._live_intents and call.id not in ctx.failed_calls
        )
        change = (
            identity_change(call, ctx.call_intents.get(call.id), self.tools,
                            self.engine.agent_version)
            if in_doubt else None
        )
        if in_doubt and (tool is None or change is not None or not tool.idempotent):
            rid = f"{call.id}:in_doubt:{attempts}"
            decision = ctx.decisions.get(rid)
            if decision is None:
                asked = ctx.reconciled.get(call.id)
                if change is None and asked is not None and asked.attempt == attempts:
                    change = "its reconcile function could not tell whether it took effect"
                return self._wait(call, rid, "in_doubt", detail=change)
            match decision.action:
                case "confirm":
                    return _Plan("run", call)
                case "result":
                    return self._record(call, decision.value, is_error=False)
                case _:
                    reason = decision.reason or "the call may have run before a crash"
                    return self._record(call, f"failed by a human decision: {reason}", True)
        kind = tool.requirement_kind if tool is not None else None
        if kind is None:
            return _Plan("run", call)
        rid = f"{call.id}:{kind}"
        decision = ctx.decisions.get(rid)
        if decision is None:
            return self._wait(call, rid, kind)
        match decision.action:
            case "confirm":
                return _Plan("run", call)
            case "input":
                return _Plan("run", call, arguments={**call.arguments, **decision.inputs})
            case "result":
                return self._record(call, decision.value, is_error=False)
            case _:
                reason = decision.reason or "no reason given"
                return self._record(call, f"rejected by a human: {reason}", is_error=True)

    def _wait(
        self, call: ToolCallPart, rid: str, kind: Any, detail: str | None = None
    ) -> _Plan:
        tool = self.tools.get(call.name)
        fields = tool.user_fields if tool is not None and kind == "user_input" else ()
        record = RequirementRecord(
            id=rid, kind=kind, call_id=call.id, tool_name=call.name,
            arguments=dict(call.arguments), fields=fields, detail=detail,
        )
        return _Plan("wait", call, requirement=record)

    @staticmethod
    def _record(call: ToolCallPart, value: JSONValue, is_error: bool) -> _Plan:
        content = value if isinstance(value, str) else json.dumps(value)
        result = ToolResultMessage(
            call_id=call.id, name=call.name, content=content, is_error=is_error
        )
        return _Plan("record", call, result=result)

    async def _tool_step(self, ctx: RunContext) -> None:
        pending = ctx.pending_calls
        if len(pending) == 1:
            # The steady loop: the one call of the last answer, its intent just
            # written by this execution, so there is nothing to reconcile or plan.
            call = next(iter(pending.values()))
            tool = self.tools.get(call.name)
            if call.id in self._live_intents and (tool is None or tool.requirement_kind is None):
                # `_run_calls` for one call, inline: one coroutine fewer alive
                # across the tool call and the commit wait.
                self._check_cancel()
                async with self._keepalive():
                    outcome = await self._run_call(ctx, call)
                self._live_intents.clear()
                if outcome is not None:
                    await self._fail_call(ctx, call, outcome)
                return
        await self._reconcile(ctx)
        calls = list(ctx.pending_calls.values())
        plans = [self._plan(ctx, c) for c in calls]
        waits = [p.requirement for p in plans if p.requirement is not None]
        records = [p for p in plans if p.result is not None]
        runs = [p for p in plans if p.action == "run"]
        if records:
            specs: list[Spec] = [
                (ToolFinishedEvent, None, {"result": p.result}) for p in records
            ]
            if len(records) == len(calls):
                specs.append((TransitionEvent, "tools_done", {}))
            await self._append(*specs)
        if not calls:
            await self._append((TransitionEvent, "tools_done", {}))
            return
        if runs:
            await self._run_calls(ctx, runs)
        if waits:
            await self._append((WaitingEvent, "needs_human", {"requirements": tuple(waits)}))

    async def _run_calls(self, ctx: RunContext, runs: list[_Plan]) -> None:
        again: list[ToolCallPart] = []
        for plan in runs:
            if plan.call.id not in self._live_intents:
                again.append(plan.call)
        if again:
            await self._intend(ctx, again)
        self._check_cancel()
        outcomes: list[Exception | None]
        if len(runs) == 1:  # the common case needs no task group
            async with self._keepalive():
                outcomes = [await self._run_call(ctx, runs[0].call, runs[0].arguments)]
        else:
            outcomes = await self._run_parallel(ctx, runs)
        self._live_intents.clear()
        failures: list[tuple[ToolCallPart, Exception]] = []
        for plan, outcome in zip(runs, outcomes, strict=True):
            if outcome is not None:
                failures.append((plan.call, outcome))
        if failures:
            await self._fail_call(ctx, *failures[0])

    async def _fail_call(self, ctx: RunContext, call: ToolCallPart, error: Exception) -> None:
        """Record ``error`` as the run's failure in ``call`` and raise `RunFailedError`."""
        info = ErrorInfo.from_exception(error)
        await self._append(
            (FailedEvent, "fail", {"error": info, "failed_state": RunState.TOOL_EXEC,
                                   "call_id": call.id})
        )
        what = (
            "returned a result that cannot be stored"
            if isinstance(error, UnstorableValueError)
            else f"raised {info.type}"
        )
        raise RunFailedError(
            ctx.run_id, ctx.state.value, RunState.TOOL_EXEC.value,
            f"tool {call.name!r} (call {call.id}) {what}: {info.message}",
            next_step=getattr(error, "next_step", None)
            or (
                f"fix tool {call.name!r} so its result can be stored"
                if isinstance(error, UnstorableValueError)
                else None
            ),
        ) from error

    async def _run_parallel(self, ctx: RunContext, runs: list[_Plan]) -> list[Exception | None]:
        self.parallel = True  # their appends take the execution's lock
        try:
            async with self._keepalive(), asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._run_call(ctx, p.call, p.arguments)) for p in runs
                ]
        except BaseExceptionGroup as grouped:
            raise grouped.exceptions[0] from None
        finally:
            self.parallel = False
        return [t.result() for t in tasks]

    async def _intend(self, ctx: RunContext, again: list[ToolCallPart]) -> None:
        self._check_cancel()
        # A call with no live intent either never started (approved just now)
        # or may have run in an earlier process: tools are at-least-once (rule
        # 4), and the new intent records the (re-)run under the same
        # idempotency key.
        version = self.engine.agent_version
        await self._append(
            *(
                (ToolStartedEvent, None, intent_fields(
                    self.tools.get(c.name), c, ctx.call_attempts.get(c.id, 0) + 1, version
                ))
                for c in again
            )
        )
        self._live_intents.update(c.id for c in again)

    async def _run_call(
        self, ctx: RunContext, call: ToolCallPart, arguments: Mapping[str, JSONValue] | None = None
    ) -> Exception | None:
        """Run one call and append its result; return the tool's exception instead of raising.

        Store errors propagate: without a durable result nothing else may start.
        """
        started = time.perf_counter()
        tool = self.tools.get(call.name)
        is_error = True
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            content = f"unknown tool {call.name!r}; the available tools are: {known}"
        else:
            tool_ctx = ToolContext(
                run_id=ctx.run_id,
                call_id=call.id,
                idempotency_key=f"{ctx.run_id}:{ctx.calls_seq}:{call.id}",
                attempt=ctx.call_attempts.get(call.id, 1),
            )
            try:
                with self._tel.tool(ctx, call, tool_ctx.attempt) as traced:
                    content = await tool.call(arguments or call.arguments, tool_ctx)
                    traced.returned(content)
                is_error = False
            except ToolRetry as retry:
                content = retry.message
            except ToolArgumentsError as invalid:
                content = str(invalid)
            except Exception as exc:
                return exc
        if is_error:
            content = escape_surrogates(content)  # error text, like a stored ErrorInfo
        # The record's validator itself, as `ExecutionCore._build` builds events.
        result = validator_of(ToolResultMessage).validate_python(
            {"call_id": call.id, "name": call.name, "content": content, "is_error": is_error}
        )
        finished: Spec = (
            ToolFinishedEvent,
            None,
            {"result": result, "duration_ms": round((time.perf_counter() - started) * 1000, 3)},
        )
        if self.parallel:
            async with self._lock:
                last = len(ctx.pending_calls) == 1 and call.id in ctx.pending_calls
        else:
            last = len(ctx.pending_calls) == 1 and call.id in ctx.pending_calls
        # The last result and the move back to MODEL_CALL share one append: the
        # next effect is the model call, which starts only after it returns.
        # Only this task can complete `call`, so `last` cannot go stale.
        try:
            if last:
                await self._append(finished, (TransitionEvent, "tools_done", {}))
            else:
                await self._append(finished)
        except UnstorableValueError as unstorable:
            # Nothing was written: it fails the call as a raise would (recorded
            # with its call id), rather than staying pending and running again.
            return unstorable
        return None

