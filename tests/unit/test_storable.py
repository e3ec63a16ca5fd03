"""The encoder refuses exactly what the decoder could not read back equal; nothing else."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest
from pydantic import BaseModel

from durable_agent import (
    Agent,
    ConfigurationError,
    CorruptRunError,
    ScriptedModel,
    Task,
    UnstorableValueError,
)
from durable_agent.backends.memory import MemoryBackend
from durable_agent.fsm import RunState
from durable_agent.records import (
    MAX_DEPTH,
    AssistantMessage,
    DecisionEvent,
    ErrorInfo,
    Event,
    FailedEvent,
    ModelResponseEvent,
    RunHeader,
    ToolCallPart,
    ToolFinishedEvent,
    ToolResultMessage,
    check_event,
    decode_event,
    encode_event,
    encode_header,
    encode_tool_result,
)


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def answer(arguments: dict[str, Any], *ids: str, content: str | None = None) -> ModelResponseEvent:
    calls = tuple(ToolCallPart(id=i, name="t", arguments=arguments) for i in ids or ("c",))
    return ModelResponseEvent(
        seq=3, state=RunState.TOOL_EXEC, trigger="tool_calls", model="m",
        message=AssistantMessage(content=content, tool_calls=calls),
    )


def decision(value: Any) -> DecisionEvent:
    return DecisionEvent(
        seq=3, state=RunState.TOOL_EXEC, requirement_id="r", action="result", value=value
    )


def refused(event: Event) -> str:
    with pytest.raises(UnstorableValueError) as raised:
        encode_event(event)
    with pytest.raises(UnstorableValueError) as checked:
        check_event(event)
    assert str(checked.value) == str(raised.value)  # the engine's check and the encoder agree
    message = str(raised.value)
    message.encode("utf-8")  # the refusal itself can always be stored
    return message


# -- the agreement ----------------------------------------------------------------------

_CHARS = (
    [chr(c) for c in range(32, 127)]
    + ["\x00", "\n", '"', "\\", "é", "ß", "€", "中", "\U0001f600", "\u2028"]
)
_SURROGATES = ["\ud800", "\udce9", "\udfff"]
_NUMBERS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 0.1, 2.5]


def _text(rng: random.Random) -> str:
    chars = [rng.choice(_CHARS) for _ in range(rng.randrange(6))]
    if rng.random() < 0.05:
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(_SURROGATES))
    return "".join(chars)


def _value(rng: random.Random, depth: int) -> Any:
    """A JSON-ish value whose deepest branch is ``depth`` containers (0: a scalar)."""
    if depth == 0:
        pick = rng.randrange(6)
        if pick == 0:
            return _text(rng)
        if pick == 1:
            return rng.choice([0, -1, 7, 2**63, -(2**100), 10**30])
        if pick == 2:
            return rng.choice(_NUMBERS) if rng.random() < 0.3 else rng.uniform(-1e9, 1e9)
        if pick == 3:
            return rng.random() < 0.5
        if pick == 4:
            return None
        return _text(rng)
    width = rng.randrange(1, 4)
    deep = rng.randrange(width)  # one branch carries the full depth
    items = [_value(rng, depth - 1 if i == deep else int(rng.random() < 0.2)) for i in
             range(width)]
    if rng.random() < 0.5:
        return items
    return {(_text(rng) + str(i)): item for i, item in enumerate(items)}


def _storable(value: Any, level: int) -> bool:
    """The oracle: could ``value`` at container level ``level`` be read back equal?"""
    if isinstance(value, str):
        return not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return level + 1 <= MAX_DEPTH and all(_storable(v, level + 1) for v in value)
    if isinstance(value, dict):
        return level + 1 <= MAX_DEPTH and all(
            _storable(k, level) and _storable(v, level + 1) for k, v in value.items()
        )
    return True


def test_whatever_the_encoder_accepts_the_decoder_reads_back_equal() -> None:
    rng = random.Random(20240611)
    accepted = refused_count = 0
    for _ in range(600):
        value = _value(rng, rng.choice([0, 1, 2, 5, 20, 62, 63, 64, 65, 66, 80, 300]))
        for event, level in ((decision(value), 0), (answer({"v": value}), 1)):
            try:
                text = encode_event(event)
            except UnstorableValueError as exc:
                refusal: UnstorableValueError | None = exc
            else:
                refusal = None
            if refusal is not None:
                assert not _storable(value, level), f"refused a storable value: {refusal}"
                refused_count += 1
                continue
            assert _storable(value, level), f"accepted {value!r:.200}"
            assert decode_event("r", 3, text) == event
            accepted += 1
    # Both sides of the boundary were exercised.
    assert accepted > 250, accepted
    assert refused_count > 250, refused_count


def test_the_decoder_reads_far_deeper_than_the_encoder_writes() -> None:
    # The decoder's JSON parser (pydantic-core) stops at a document nesting limit:
    # measured 200 levels. A record wraps a JSON value in at most 4 levels of its own,
    # so the encoder's limit must stay well below; this fails if a pydantic upgrade
    # ever brings the parser's limit near MAX_DEPTH.
    def decodes(levels: int) -> bool:
        body = "[" * levels + "]" * levels
        text = (
            '{"seq":3,"state":"TOOL_EXEC","kind":"decision","requirement_id":"r",'
            f'"action":"result","value":{body}}}'
        )
        try:
            decode_event("r", 3, text)
        except CorruptRunError:
            return False
        return True

    limit = next(n for n in range(1, 1000) if not decodes(n))
    assert limit - 1 >= 2 * MAX_DEPTH, f"the decoder reads values only {limit - 1} deep"


def test_records_written_deeper_by_older_versions_still_load() -> None:
    # The decoder is not made stricter: a run stored before the limit keeps loading.
    text = encode_event(decision(nested(MAX_DEPTH - 1)))
    inner = MAX_DEPTH - 1
    deeper = text.replace("[" * inner, "[" * 150).replace("]" * inner, "]" * 150)
    assert decode_event("r", 3, deeper).value == nested(150)


# -- each refusal names the value and the reason ----------------------------------------


def test_a_value_one_level_past_the_limit_is_refused_with_its_path() -> None:
    assert encode_event(decision(nested(MAX_DEPTH)))
    message = refused(decision(nested(MAX_DEPTH + 1)))
    assert message.startswith("value[0][0][0][0][0]…[0][0]: nested more than 64 levels deep")


def test_arguments_too_deep_for_pydantic_itself_still_build_and_are_refused_by_name() -> None:
    event = answer({"x": nested(1000)})  # pydantic alone refuses past ~254 levels
    assert "arguments of tool call 'c' (t).x[0]" in refused(event)


@pytest.mark.parametrize(
    ("arguments", "where"),
    [
        ({"x": math.nan}, "(t).x: NaN is not a JSON number"),
        ({"x": [1, {"y": -math.inf}]}, "(t).x[1].y: -Infinity is not a JSON number"),
        ({"x": "caf\udce9"}, "(t).x: text holds a lone surrogate '\\udce9' at position 3"),
        ({"caf\udce9": 1}, "(t)['caf\\\\udce9']: text holds a lone surrogate"),
        ({"a b": {"c": math.inf}}, "(t)['a b'].c: Infinity"),
    ],
)
def test_nan_infinity_and_lone_surrogates_are_refused_not_written_as_null(
    arguments: dict[str, Any], where: str
) -> None:
    assert where in refused(answer(arguments))


def test_two_calls_with_one_id_in_one_answer_are_refused() -> None:
    message = refused(answer({}, "a", "b", "a"))
    assert message == (
        "tool_calls[2].id: call id 'a' is also the id of tool_calls[0]; each tool call of one "
        "answer needs its own id"
    )


def test_a_lone_surrogate_anywhere_in_a_record_is_refused() -> None:
    event = ToolFinishedEvent(
        seq=4, state=RunState.TOOL_EXEC,
        result=ToolResultMessage(call_id="c", name="ls", content="caf\udce9.txt"),
    )
    assert refused(event).startswith("result.content: text holds a lone surrogate '\\udce9'")
    with pytest.raises(UnstorableValueError, match=r"^run_id: text holds a lone surrogate"):
        encode_header(RunHeader(run_id="r\udce9"))


def test_an_error_record_escapes_lone_surrogates_so_a_failure_is_always_recordable() -> None:
    info = ErrorInfo.from_exception(FileNotFoundError("no such file: 'caf\udce9.txt'"))
    assert info.message == "no such file: 'caf\\udce9.txt'"
    event = FailedEvent(seq=4, state=RunState.ERROR, trigger="fail", error=info,
                        failed_state=RunState.TOOL_EXEC, call_id="c")
    assert decode_event("r", 4, encode_event(event)) == event


# -- tool results -------------------------------------------------------------------------


class Point(BaseModel):
    x: float


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"a": 1.5}, '{"a":1.5}'),
        (["NaN", "Infinity"], '["NaN","Infinity"]'),  # the words, in strings, are fine
        (Point(x=2), '{"x":2.0}'),
        # A pydantic model writes NaN as its own config says (null by default):
        # standard JSON, so it is kept.
        (Point(x=-math.inf), '{"x":null}'),
    ],
)
def test_a_tool_result_is_standard_json(value: object, text: str) -> None:
    assert encode_tool_result(value) == text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"mean": math.nan}, "the tool's result.mean: NaN is not a JSON number"),
        ([1, math.inf], r"the tool's result\[1\]: Infinity is not a JSON number"),
        (["caf\udce9"], r"the tool's result\[0\]: text holds a lone surrogate"),
    ],
)
def test_a_tool_result_with_nan_or_a_lone_surrogate_is_refused_by_path(
    value: object, message: str
) -> None:
    with pytest.raises(UnstorableValueError, match=message):
        encode_tool_result(value)


# -- run ids ------------------------------------------------------------------------------


def test_a_run_id_with_a_lone_surrogate_is_a_configuration_error_everywhere() -> None:
    bad = "run-\udce9"
    with pytest.raises(ConfigurationError, match=r"lone surrogate '\\udce9' at position 4"):
        Task("x", run_id=bad)
    agent = Agent(ScriptedModel(["x"]), db=MemoryBackend())
    calls = [
        agent.continue_run_async(run_id=bad),
        agent.get_run_async(bad),
        agent.cancel_run_async(bad),
    ]
    for call in calls:
        with pytest.raises(ConfigurationError, match="UTF-8 cannot encode"):
            asyncio.run(call)


@pytest.mark.parametrize("bad", ["", "   ", 7])
def test_an_empty_or_non_str_run_id_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="non-empty str"):
        Task("x", run_id=bad)  # type: ignore[arg-type]
    agent = Agent(ScriptedModel(["x"]), db=MemoryBackend())
    with pytest.raises(ConfigurationError, match="non-empty str"):
        asyncio.run(agent.continue_run_async(run_id=bad))  # type: ignore[arg-type]


def test_the_texts_a_check_keeps_are_the_encoding_and_go_with_the_events() -> None:
    """`check_events` keeps what `encode_event` would write; nothing outlives the append.

    A store that keeps event objects never asks for the texts: they live on the
    list the engine hands over, so no event outlives its append because of them.
    """
    import gc
    import weakref

    from durable_agent.records import CheckedEvents, check_events, encode_events

    event = answer({"x": [1, 2]}, "c1", content="hi")
    fresh = encode_event(event)
    checked = check_events([event])
    assert encode_events(checked) == [fresh]  # served from the check, equal to a fresh encoding
    assert encode_events([event]) == [fresh]  # any other sequence is encoded
    checked.append(event)  # a list that no longer matches its texts is encoded again
    assert encode_events(checked) == [fresh, fresh]

    appended: list[weakref.ref[Any]] = []
    kinds: list[type[Any]] = []

    class KeepsObjects(MemoryBackend):
        async def append(self, run_id: str, events: Any, **kwargs: Any) -> Any:
            appended.extend(weakref.ref(e) for e in events)
            kinds.append(type(events))
            lease = kwargs["lease"]
            return lease.renewed(lease.expires_at, None)  # stores nothing, encodes nothing

    agent = Agent(ScriptedModel(["done"]), db=KeepsObjects())
    agent.do(Task("hi"))
    assert appended
    assert kinds == [CheckedEvents]
    gc.collect()
    assert all(ref() is None for ref in appended)  # nothing kept them alive
