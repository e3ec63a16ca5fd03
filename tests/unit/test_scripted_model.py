"""ScriptedModel: the answer is chosen by the conversation, whatever else the model served."""

from __future__ import annotations

import asyncio

from durable_agent import ScriptedModel, ToolCall
from durable_agent.records import AssistantMessage, Message, ToolResultMessage, UserMessage


def _answer(model: ScriptedModel, history: list[Message]) -> AssistantMessage:
    response = asyncio.run(model.request(history, tools=[]))
    return response.message


def test_interleaved_conversations_on_one_model_each_get_their_own_turn() -> None:
    model = ScriptedModel([ToolCall("lookup", {"key": 1}), ToolCall("lookup", {"key": 2}), "done"])
    histories: list[list[Message]] = [[UserMessage(content=f"task {i}")] for i in range(3)]
    for turn in range(3):
        for history in histories:  # one call per conversation in turn, as concurrent runs do
            answer = _answer(model, history)
            history.append(answer)
            if turn < 2:
                assert answer.tool_calls[0].id == f"call_{turn}_0"
                history.append(
                    ToolResultMessage(call_id=f"call_{turn}_0", name="lookup", content="x")
                )
            else:
                assert answer.content == "done"


def test_a_copy_of_a_history_gets_the_answer_the_original_would_get() -> None:
    model = ScriptedModel([ToolCall("lookup"), "done"])
    history: list[Message] = [UserMessage(content="task")]
    first = _answer(model, history)
    history += [
        first,
        ToolResultMessage(call_id=first.tool_calls[0].id, name="lookup", content="x"),
    ]
    # A resumed run rebuilds its history as a new list: counted afresh, same turn.
    assert _answer(model, list(history)).content == "done"
    assert _answer(model, history).content == "done"


def test_more_conversations_than_the_model_keeps_counts_for_still_get_the_right_turn() -> None:
    model = ScriptedModel(["one", "two"])
    histories: list[list[Message]] = [[UserMessage(content=f"task {i}")] for i in range(5000)]

    async def both_turns() -> list[str | None]:
        for history in histories:
            history.append((await model.request(history, tools=[])).message)
        return [(await model.request(h, tools=[])).message.content for h in histories]

    assert set(asyncio.run(both_turns())) == {"two"}
