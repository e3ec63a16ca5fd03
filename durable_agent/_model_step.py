"""The model step: one model call, retried per the policy, and its answer recorded.

The call's intent is the MODEL_CALL transition already stored (rule 1). The
answer is checked before anything is written: an answer that cannot be stored
goes back to the model within the retry budget, like a structured answer that
does not match its format; tool-call intents ride in the same append as the
answer that asks for them, so they are durable before any call starts.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pydantic import ValidationError

from durable_agent._recording import ExecutionCore, Spec
from durable_agent._stream_hooks import model_call
from durable_agent._tool_identity import intent_fields
from durable_agent.errors import (
    OutputValidationError,
    RunFailedError,
    RunStateError,
    UnstorableValueError,
)
from durable_agent.fsm import RunState
from durable_agent.models import OutputSchema
from durable_agent.records import (
    AssistantMessage,
    ErrorInfo,
    FailedEvent,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    OutputRejectedEvent,
    ToolStartedEvent,
    UserMessage,
    check_answer,
    escape_surrogates,
)
from durable_agent.retry import is_retryable
from durable_agent.run import RunContext

__all__ = ["ModelStep"]


class ModelStep(ExecutionCore):
    """How an execution performs MODEL_CALL."""

    async def _model_step(self, ctx: RunContext) -> None:
        engine = self.engine
        model = engine.model
        if model is None:
            raise RunStateError(
                ctx.run_id, ctx.state.value,
                "this engine only records decisions and cancellations; continue the run "
                "with its Agent",
            )
        definitions = self._definitions
        fmt = ctx.output_format
        schema = OutputSchema(fmt.name, fmt.json_schema, fmt.description) if fmt else None
        repeated, self._resumed_in_model_call = self._resumed_in_model_call, False
        attempt = 1
        while True:
            self._check_cancel()
            started = time.perf_counter()
            try:
                with self._tel.chat(ctx, model, attempt) as call:
                    async with self._keepalive():
                        # A stream (if one follows this run) streams the call; else model.request.
                        response = await model_call(
                            model, ctx.run_id, ctx.messages, tools=definitions,
                            output_schema=schema, attempt=attempt, repeated=repeated,
                        )
                    call.answered(response)
            except Exception as exc:
                info = ErrorInfo.from_exception(exc)
                if is_retryable(exc) and attempt < engine.retry.attempts:
                    delay = engine.retry.delay_for(attempt, exc)
                    await self._append(
                        (ModelAttemptFailedEvent, None, {"attempt": attempt, "error": info,
                                                         "retry_in": delay})
                    )
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                await self._append(
                    (FailedEvent, "fail", {"error": info, "failed_state": RunState.MODEL_CALL})
                )
                raise RunFailedError(
                    ctx.run_id, ctx.state.value, RunState.MODEL_CALL.value,
                    f"model call failed after {attempt} attempt(s): {info.type}: {info.message}",
                ) from exc
            answer = {
                "message": response.message,
                "model": response.model,
                "usage": response.usage,
                "attempt": attempt,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "repeated": repeated,
            }
            # The append is awaited here, not in a helper coroutine: one frame
            # fewer alive across each commit wait, and one fewer to resume.
            message = response.message
            try:
                planned = self._answer_specs(ctx, message, answer)
                if isinstance(planned, tuple):
                    specs, now = planned
                    await self._append(*specs)
                    if now:
                        self._live_intents.update(now)
                    return
                problem, feedback = planned, (
                    f"Your answer does not match the required output format: {planned}. "
                    "Answer again with only JSON that matches the schema."
                )
            except UnstorableValueError as unstorable:
                # The answer itself cannot be kept: the log keeps its text (escaped)
                # and the names of its calls, so the model sees what it sent.
                problem, message = unstorable, _stand_in(message)
                feedback = escape_surrogates(
                    f"Your previous answer could not be stored: {unstorable}. Answer again "
                    "without that value."
                )
            info = ErrorInfo.from_exception(problem)
            if attempt < engine.retry.attempts:
                # Within the retry budget the model sees why its answer was refused.
                await self._append(
                    (OutputRejectedEvent, None, {
                        "message": message, "feedback": UserMessage(content=feedback),
                        "error": info, "model": escape_surrogates(response.model),
                        "usage": response.usage, "attempt": attempt,
                    })
                )
                attempt += 1
                continue
            await self._append(
                (FailedEvent, "fail", {"error": info, "failed_state": RunState.MODEL_CALL})
            )
            what = (
                "the final answer failed validation"
                if isinstance(problem, OutputValidationError)
                else "the model's answer could not be stored"
            )
            raise RunFailedError(
                ctx.run_id, ctx.state.value, RunState.MODEL_CALL.value,
                f"{what} after {attempt} attempt(s): {info.message}",
            ) from problem

    def _answer_specs(
        self, ctx: RunContext, message: AssistantMessage, answer: dict[str, Any]
    ) -> tuple[list[Spec], list[str]] | Exception:
        """The events that record an acceptable answer and the calls they start, or why not.

        Raises `UnstorableValueError` for a final answer that cannot be stored;
        for an answer with tool calls, `_append` checks it (`check_event`, which
        is `check_answer`) and raises the same before anything is written.
        """
        if message.tool_calls:
            # The intents of the calls that start at once ride in the same
            # atomic append as the answer that asks for them: one write
            # instead of two, and rule 1 holds because they start only after
            # it returns. Calls that wait for a human get no intent yet.
            specs: list[Spec] = [(ModelResponseEvent, "tool_calls", answer)]
            now: list[str] = []
            version = self.engine.agent_version
            for call in message.tool_calls:
                tool = self.tools.get(call.name)
                if tool is None or tool.requirement_kind is None:
                    fields = intent_fields(tool, call, 1, version)
                    specs.append((ToolStartedEvent, None, fields))
                    now.append(call.id)
            return specs, now
        check_answer(message)
        problem = self._check_output(ctx, message.content)
        if problem is None:
            return [(ModelResponseEvent, "final_answer", answer)], []
        return problem

    def _check_output(self, ctx: RunContext, content: str | None) -> Exception | None:
        """Return why ``content`` is not an acceptable final answer, or None."""
        if ctx.output_format is None:
            return None
        text = content or ""
        try:
            if self.output_type is not None:
                self.output_type.model_validate_json(text)
            else:
                json.loads(text)
        except ValidationError as exc:
            return OutputValidationError(
                f"{exc.error_count()} error(s): "
                + "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                    for e in exc.errors()
                )
            )
        except ValueError as exc:
            return OutputValidationError(f"not JSON: {exc}")
        return None


def _stand_in(message: AssistantMessage) -> AssistantMessage:
    """What the log keeps of an answer it could not store: its text escaped, its calls named."""
    parts = [escape_surrogates(message.content)] if message.content else []
    if message.tool_calls:
        names = ", ".join(escape_surrogates(c.name) for c in message.tool_calls)
        parts.append(f"[tool calls not stored: {names}]")
    return AssistantMessage(content="\n".join(parts))

