"""Tools: plain sync or async functions with type hints.

The JSON schema a model sees is built by pydantic from the signature, and the
model's arguments are validated against it before the function runs. A tool
that wants to know which call it is serving (for an idempotency key) declares
a parameter annotated `ToolContext`; it is filled in and hidden from the model.

A tool with outside effects may also say how to find out whether a call that
was in flight at a crash took effect: ``@tool(reconcile=fn)``, where ``fn``
takes a `ReconcileContext` and returns a `Reconciliation`.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic_core import PydanticSerializationError

from durable_agent.errors import ConfigurationError, ToolArgumentsError, ToolResultError
from durable_agent.models import ToolDefinition
from durable_agent.records import JSONValue, ReconcileAnswer, ToolSignature, encode_tool_result

__all__ = [
    "ReconcileContext",
    "Reconciliation",
    "Tool",
    "ToolContext",
    "tool",
    "toolset",
]


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may know about the call it serves.

    ``idempotency_key`` is ``run_id:seq:call_id``: the same on every execution
    of one call, including a re-run after a crash (at-least-once), so a tool
    with outside effects can pass it on to make them exactly-once.
    """

    run_id: str
    call_id: str
    idempotency_key: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ReconcileContext:
    """A call that was in flight when a process died, as its reconcile function sees it.

    ``idempotency_key`` is the key the call ran under (`ToolContext`), the
    thing to look up in the system the tool talks to; ``arguments`` are the
    model's arguments as recorded.
    """

    run_id: str
    call_id: str
    tool_name: str
    idempotency_key: str
    attempt: int
    arguments: Mapping[str, JSONValue]


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """A reconcile function's answer; build it with `landed`, `not_landed` or `unknown`."""

    answer: ReconcileAnswer
    result: JSONValue = None

    @classmethod
    def landed(cls, result: JSONValue) -> Reconciliation:
        """The effect took place: ``result`` is recorded as the call's result, nothing re-runs."""
        return cls("landed", result)

    @classmethod
    def not_landed(cls) -> Reconciliation:
        """The effect did not take place: the call runs (again) now."""
        return cls("not_landed")

    @classmethod
    def unknown(cls) -> Reconciliation:
        """Cannot tell: an idempotent tool re-runs; an ``idempotent=False`` one waits."""
        return cls("unknown")


ReconcileFunction = Callable[[ReconcileContext], "Reconciliation | Awaitable[Reconciliation]"]
"""``fn(ctx)``, sync or async, returning a `Reconciliation`."""


class Tool:
    """A function the model may call, with its schema and validator.

    Args:
        requires_confirmation: a human approves (or rejects) each call first.
        external_execution: the caller runs the call and supplies its result;
            the function only describes the parameters and is never called.
        requires_user_input: parameters a human provides instead of the model
            (they are hidden from the model's schema).
        idempotent: False means a call whose intent was recorded without a
            result (the process died mid-call) is never re-run automatically:
            the run waits for a human to decide it.
        reconcile: asked, on resume, about a call in flight at a crash, before
            anything re-runs it: ``fn(ctx: ReconcileContext) -> Reconciliation``
            (sync or async). It runs under the run's deadline and cancellation,
            like the tool; an exception it raises fails the run (resumable).
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires_confirmation: bool = False,
        external_execution: bool = False,
        requires_user_input: Iterable[str] = (),
        idempotent: bool = True,
        reconcile: ReconcileFunction | None = None,
    ) -> None:
        if not callable(function):
            raise ConfigurationError(f"a tool must be a function, got {function!r}")
        if isinstance(requires_user_input, str):
            raise ConfigurationError(
                "requires_user_input must be a list of parameter names, not a str"
            )
        self.requires_confirmation = bool(requires_confirmation)
        self.external_execution = bool(external_execution)
        self.user_fields: tuple[str, ...] = tuple(requires_user_input)
        self.idempotent = bool(idempotent)
        if reconcile is not None and not callable(reconcile):
            raise ConfigurationError(f"reconcile= must be a function, got {reconcile!r}")
        self.reconcile = reconcile
        self.function = function
        self.name: str = name or str(getattr(function, "__name__", ""))
        if not self.name.isidentifier():
            raise ConfigurationError(
                f"tool name {self.name!r} must be an identifier (letters, digits, _); "
                + (
                    "a lambda has no name of its own: wrap it as Tool(fn, name='my_tool')"
                    if self.name == "<lambda>"
                    else "pass a valid one with @tool(name='my_tool')"
                )
            )
        self.description = description or inspect.getdoc(function) or ""
        self.is_async = inspect.iscoroutinefunction(function)
        self._ctx_param, self._arguments = self._build_arguments_model(function)
        self._validator = self._arguments.__pydantic_validator__
        unknown = set(self.user_fields) - set(self._arguments.model_fields)
        if unknown:
            raise ConfigurationError(
                f"tool {self.name!r}: requires_user_input names {sorted(unknown)}, which are "
                "not parameters of the function"
            )
        schema = self._arguments.model_json_schema()
        schema.pop("title", None)  # it holds the tool's name: a rename alone is no schema change
        self.schema_hash = hashlib.sha256(
            json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()[:16]
        """A hash of every parameter's name and type (a docstring change keeps it)."""
        # Fields a human provides are not the model's to fill in.
        properties = schema.get("properties", {})
        for hidden in self.user_fields:
            properties.pop(hidden, None)
        if "required" in schema:
            schema["required"] = [f for f in schema["required"] if f not in self.user_fields]
        self.parameters = cast(dict[str, JSONValue], schema)

    def _build_arguments_model(
        self, function: Callable[..., Any]
    ) -> tuple[str | None, type[BaseModel]]:
        try:
            hints = get_type_hints(function)
        except Exception as exc:  # a forward reference that cannot resolve, say
            raise ConfigurationError(f"tool {self.name!r}: cannot read type hints: {exc}") from exc
        ctx_param: str | None = None
        fields: dict[str, Any] = {}
        for param in inspect.signature(function).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigurationError(
                    f"tool {self.name!r}: *args and **kwargs cannot be described to a model"
                )
            hint = hints.get(param.name)
            if hint is ToolContext:
                ctx_param = param.name
                continue
            if hint is None:
                raise ConfigurationError(
                    f"tool {self.name!r}: parameter {param.name!r} needs a type hint so the "
                    "model can be told its type"
                )
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hint, default)
        model = create_model(
            f"{self.name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        return ctx_param, cast(type[BaseModel], model)

    def signature(self) -> ToolSignature:
        """Name, argument-schema hash and ``idempotent``, as intents and runs record them."""
        return ToolSignature(
            name=self.name, schema_hash=self.schema_hash, idempotent=self.idempotent
        )

    async def reconcile_call(self, ctx: ReconcileContext) -> Reconciliation:
        """Ask the reconcile function about an in-flight call (sync ones in a worker thread).

        Raises `ToolResultError` when it answers something else than a `Reconciliation`.
        """
        fn = self.reconcile
        assert fn is not None
        if inspect.iscoroutinefunction(fn):
            answer = await fn(ctx)
        else:
            answer = await asyncio.to_thread(fn, ctx)
            if inspect.isawaitable(answer):
                answer = await answer
        if not isinstance(answer, Reconciliation):
            raise ToolResultError(
                self.name,
                f"the reconcile function of tool {self.name!r} returned {answer!r}; it must "
                "return Reconciliation.landed(result), .not_landed() or .unknown()",
            )
        return answer

    def definition(self) -> ToolDefinition:
        """The name, description and JSON schema sent to the model."""
        return ToolDefinition(self.name, self.description, self.parameters)

    def validate(self, arguments: Mapping[str, JSONValue]) -> dict[str, Any]:
        """Validate the model's arguments; `ToolArgumentsError` says what is wrong."""
        try:
            # The model's validator itself: `model_validate`'s Python wrapper is
            # more than half the cost of a one-argument call, once per tool call.
            parsed = self._validator.validate_python(
                arguments if type(arguments) is dict else dict(arguments)
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: {problems}"
            ) from exc
        # The model forbids extra fields, so its ``__dict__`` holds exactly the
        # arguments (cheaper than a lookup per field, once per tool call).
        return dict(parsed.__dict__)

    async def call(self, arguments: Mapping[str, JSONValue], ctx: ToolContext) -> str:
        """Validate, run the function and return its result as text for the model.

        A sync function runs in a worker thread so parallel calls overlap and
        the event loop stays free.
        """
        kwargs = self.validate(arguments)
        if self._ctx_param is not None:
            kwargs[self._ctx_param] = ctx
        if self.is_async:
            # A quoted type: ``Callable[...]`` would build a generic alias per call.
            result = await cast("Callable[..., Awaitable[Any]]", self.function)(**kwargs)
        else:
            result = await asyncio.to_thread(self.function, **kwargs)
        if isinstance(result, str):
            return result
        try:
            return encode_tool_result(result)
        except PydanticSerializationError as exc:
            raise ToolResultError(
                self.name,
                f"tool {self.name!r} returned a {type(result).__name__}, which is not JSON: {exc}",
            ) from exc

    @property
    def requirement_kind(self) -> Literal["confirmation", "external", "user_input"] | None:
        """The human decision each call of this tool needs first, if any."""
        if self.external_execution:
            return "external"
        if self.user_fields:
            return "user_input"
        if self.requires_confirmation:
            return "confirmation"
        return None

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    requires_confirmation: bool = False,
    external_execution: bool = False,
    requires_user_input: Iterable[str] = (),
    idempotent: bool = True,
    reconcile: ReconcileFunction | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_confirmation: bool = False,
    external_execution: bool = False,
    requires_user_input: Iterable[str] = (),
    idempotent: bool = True,
    reconcile: ReconcileFunction | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Decorate a function as a `Tool` (plain functions are accepted by Agent too).

    ``@tool`` alone, or ``@tool(requires_confirmation=True, idempotent=False, ...)``
    with the options of `Tool`.
    """

    def build(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name=name,
            description=description,
            requires_confirmation=requires_confirmation,
            external_execution=external_execution,
            requires_user_input=requires_user_input,
            idempotent=idempotent,
            reconcile=reconcile,
        )

    return build(function) if function is not None else build


def toolset(items: Iterable[Tool | Callable[..., Any]], *, owner: str) -> dict[str, Tool]:
    """Turn functions and tools into a name → `Tool` map, refusing duplicate names."""
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ConfigurationError(f"{owner}(tools=...) must be a list of functions or Tools")
    tools: dict[str, Tool] = {}
    for item in items:
        t = item if isinstance(item, Tool) else Tool(item)
        if t.name in tools and tools[t.name] is not t:
            raise ConfigurationError(f"{owner}: two tools are named {t.name!r}")
        tools[t.name] = t
    return tools
