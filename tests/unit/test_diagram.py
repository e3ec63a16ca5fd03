"""Diagrams come from fsm.TRANSITIONS: every state and row appears, and a run's path is exact."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET

import pytest

from durable_agent import (
    Agent,
    ModelHTTPError,
    RunFailedError,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
)
from durable_agent.backends.memory import MemoryBackend
from durable_agent.diagram import (
    FORMATS,
    Diagram,
    RunPath,
    Step,
    machine_diagram,
    machine_dot,
    machine_mermaid,
    run_diagram,
    run_dot,
    run_mermaid,
)
from durable_agent.errors import ConfigurationError, CorruptRunError
from durable_agent.fsm import FINAL_STATES, TRANSITIONS, RunState
from durable_agent.records import CreatedEvent, StoredRun, TransitionEvent, UserMessage

S = RunState

# -- a small strict reader of the Mermaid we write ------------------------------------------------

_EDGE = re.compile(r"^    (\[\*\]|[A-Z_]+) --> (\[\*\]|[A-Z_]+)(?: : (.+))?$")
_CLASSDEF = re.compile(r"^    classDef (visited|current|unvisited) [a-z-]+:[^ ]+$")
_CLASS = re.compile(r"^    class ([A-Z_]+(?:, [A-Z_]+)*) (visited|current|unvisited)$")


class Mermaid:
    """The edges and classes of a ``stateDiagram-v2``; any other line fails the test."""

    def __init__(self, text: str) -> None:
        lines = text.splitlines()
        assert lines[0] == "stateDiagram-v2"
        assert text.endswith("\n")
        self.edges: list[tuple[str, str, str | None]] = []
        self.classes: dict[str, set[str]] = {}
        for line in lines[1:]:
            if match := _EDGE.match(line):
                self.edges.append((match[1], match[2], match[3]))
            elif match := _CLASS.match(line):
                self.classes.setdefault(match[2], set()).update(match[1].split(", "))
            else:
                assert _CLASSDEF.match(line), f"not a stateDiagram-v2 line we write: {line!r}"

    @property
    def states(self) -> set[str]:
        named = {s for edge in self.edges for s in edge[:2]} | set().union(*self.classes.values())
        return named - {"[*]"}


def test_the_machine_in_mermaid_has_every_state_and_every_table_row() -> None:
    chart = Mermaid(machine_mermaid())
    assert chart.states == {s.value for s in RunState}
    rows = {(src, dst, label.split()[0]) for src, dst, label in chart.edges if label}
    assert rows == {(r.source.value, r.dest.value, r.trigger) for r in TRANSITIONS}
    assert len([e for e in chart.edges if e[2]]) == len(TRANSITIONS)
    assert ("[*]", "PENDING", None) in chart.edges
    assert {src for src, dst, _ in chart.edges if dst == "[*]"} == {s.value for s in FINAL_STATES}


def test_the_guarded_resume_rows_name_the_state_they_return_to() -> None:
    labels = {(src, dst): label for src, dst, label in Mermaid(machine_mermaid()).edges}
    assert labels[("ERROR", "MODEL_CALL")] == "resume (failed in MODEL_CALL)"
    assert labels[("ERROR", "TOOL_EXEC")] == "resume (failed in TOOL_EXEC)"


def _dot_edges(text: str) -> list[tuple[str, str, dict[str, str]]]:
    pgv = pytest.importorskip("pygraphviz", reason="the diagrams extra parses DOT with Graphviz")
    graph = pgv.AGraph(string=text)  # Graphviz's own parser: raises on a syntax error
    return [(e[0], e[1], dict(e.attr)) for e in graph.edges()]


def test_the_machine_in_dot_parses_with_graphviz_and_has_every_row() -> None:
    pgv = pytest.importorskip("pygraphviz")
    graph = pgv.AGraph(string=machine_dot())
    assert set(graph.nodes()) == {s.value for s in RunState} | {"__start__"}
    edges = {
        (src, dst, attrs["label"])
        for src, dst, attrs in _dot_edges(machine_dot())
        if attrs.get("label")
    }
    expected = {
        (r.source.value, r.dest.value, r.trigger) for r in TRANSITIONS if r.condition is None
    } | {
        (r.source.value, r.dest.value, f"resume (failed in {r.dest.value})")
        for r in TRANSITIONS
        if r.condition
    }
    assert edges == expected
    for state in FINAL_STATES:
        assert graph.get_node(state.value).attr["peripheries"] == "2"


# -- one run's path -----------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _known_run() -> StoredRun:
    """Two tool turns, a failed model call in between, resumed, then the answer."""

    async def go() -> StoredRun:
        db = MemoryBackend()
        model = ScriptedModel(
            [ToolCall("add", {"a": 1, "b": 2}), ToolCall("add", {"a": 3, "b": 4}), "10"],
            failures=[ScriptedFailure(turn=1, error=ModelHTTPError(400, "bad"))],
        )
        agent = Agent(model, db=db, tools=[add], retry=1)
        with pytest.raises(RunFailedError):
            await agent.do_async(Task("Add things.", run_id="known"))
        await agent.continue_run_async(run_id="known")
        return await db.load_run("known")

    return asyncio.run(go())


EXPECTED_STEPS = [
    ("start", S.PENDING, S.MODEL_CALL),
    ("tool_calls", S.MODEL_CALL, S.TOOL_EXEC),
    ("tools_done", S.TOOL_EXEC, S.MODEL_CALL),
    ("fail", S.MODEL_CALL, S.ERROR),
    ("resume", S.ERROR, S.MODEL_CALL),
    ("tool_calls", S.MODEL_CALL, S.TOOL_EXEC),
    ("tools_done", S.TOOL_EXEC, S.MODEL_CALL),
    ("final_answer", S.MODEL_CALL, S.DONE),
]


def test_a_known_runs_path_has_its_edges_in_order() -> None:
    stored = _known_run()
    path = RunPath.from_stored(stored)
    assert [(s.trigger, s.source, s.dest) for s in path.steps] == EXPECTED_STEPS
    assert [s.seq for s in path.steps] == [e.seq for e in stored.events if e.trigger]
    assert path.state is S.DONE
    assert path.run_id == "known"
    assert path.visited == {S.PENDING, S.MODEL_CALL, S.TOOL_EXEC, S.ERROR, S.DONE}


def test_a_known_runs_mermaid_numbers_the_edges_and_dims_the_states_never_visited() -> None:
    chart = Mermaid(run_diagram(_known_run()).text)
    assert [e for e in chart.edges if e[2]] == [
        ("PENDING", "MODEL_CALL", "1. start"),
        ("MODEL_CALL", "TOOL_EXEC", "2, 6. tool_calls"),
        ("TOOL_EXEC", "MODEL_CALL", "3, 7. tools_done"),
        ("MODEL_CALL", "ERROR", "4. fail"),
        ("ERROR", "MODEL_CALL", "5. resume"),
        ("MODEL_CALL", "DONE", "8. final_answer"),
    ]
    assert chart.classes == {
        "visited": {"PENDING", "MODEL_CALL", "TOOL_EXEC", "ERROR"},
        "current": {"DONE"},
        "unvisited": {"WAITING", "CANCELLED"},
    }
    assert ("DONE", "[*]", None) in chart.edges
    assert chart.states == {s.value for s in RunState}


def test_a_known_runs_dot_draws_taken_edges_bold_and_numbered_and_the_rest_grey() -> None:
    text = run_dot(RunPath.from_stored(_known_run()))
    edges = _dot_edges(text)
    taken = {(src, dst): a["label"] for src, dst, a in edges if a.get("penwidth") == "2.5"}
    assert taken == {
        ("PENDING", "MODEL_CALL"): "1. start",
        ("MODEL_CALL", "TOOL_EXEC"): "2, 6. tool_calls",
        ("TOOL_EXEC", "MODEL_CALL"): "3, 7. tools_done",
        ("MODEL_CALL", "ERROR"): "4. fail",
        ("ERROR", "MODEL_CALL"): "5. resume",
        ("MODEL_CALL", "DONE"): "8. final_answer",
    }
    # Every other row is drawn, greyed, with its plain trigger.
    assert len(edges) == len(TRANSITIONS) + 1  # and the start arrow
    pgv = pytest.importorskip("pygraphviz")
    graph = pgv.AGraph(string=text)
    assert graph.get_node("DONE").attr["penwidth"] == "3"
    assert (
        graph.get_node("WAITING").attr["fontcolor"] == graph.get_node("CANCELLED").attr["fontcolor"]
    )
    assert graph.get_node("WAITING").attr["fontcolor"] != graph.get_node("ERROR").attr["fontcolor"]
    assert graph.graph_attr["label"] == "run known: DONE"


def test_a_loop_taken_many_times_shows_how_often() -> None:
    steps = [Step(2, "start", S.PENDING, S.MODEL_CALL)]
    for turn in range(12):
        steps.append(Step(3 + 2 * turn, "tool_calls", S.MODEL_CALL, S.TOOL_EXEC))
        steps.append(Step(4 + 2 * turn, "tools_done", S.TOOL_EXEC, S.MODEL_CALL))
    path = RunPath(tuple(steps), S.MODEL_CALL)
    labels = {(src, dst): label for src, dst, label in Mermaid(run_mermaid(path)).edges}
    assert labels[("MODEL_CALL", "TOOL_EXEC")] == "2, 4 … 24. tool_calls (12 times)"
    assert labels[("TOOL_EXEC", "MODEL_CALL")] == "3, 5 … 25. tools_done (12 times)"
    assert Mermaid(run_mermaid(path)).classes["current"] == {"MODEL_CALL"}
    assert ("MODEL_CALL", "[*]", None) not in Mermaid(run_mermaid(path)).edges


def test_a_run_that_only_was_created_has_a_path_of_no_steps() -> None:
    created = CreatedEvent(seq=1, state=S.PENDING, messages=(UserMessage(content="hi"),))
    path = RunPath.from_events([created])
    assert path.steps == ()
    assert path.state is S.PENDING
    chart = Mermaid(run_mermaid(path))
    assert chart.classes["current"] == {"PENDING"}
    assert chart.classes["unvisited"] == {s.value for s in RunState} - {"PENDING"}


def test_an_event_claiming_a_move_the_table_lacks_is_a_corrupt_run() -> None:
    created = CreatedEvent(seq=1, state=S.PENDING, messages=(UserMessage(content="hi"),))
    jump = TransitionEvent(seq=2, state=S.DONE, trigger="start")
    with pytest.raises(CorruptRunError, match=r"seq 2.*PENDING --start--> DONE"):
        RunPath.from_events([created, jump], run_id="r1")
    silent = TransitionEvent(seq=2, state=S.MODEL_CALL, trigger=None)
    with pytest.raises(CorruptRunError, match="without a trigger"):
        RunPath.from_events([created, silent])


# -- the Diagram object and formats ------------------------------------------------------------


def test_text_formats_need_no_graphviz_and_are_the_same_text() -> None:
    assert machine_diagram().text == machine_mermaid()
    assert machine_diagram(format="dot").text == machine_dot()
    assert str(machine_diagram(format="mermaid")) == machine_mermaid()
    assert FORMATS == ("mermaid", "dot", "svg", "png")


def test_an_unknown_format_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigurationError, match="unknown diagram format 'jpeg'; use one of mermaid"
    ):
        machine_diagram(format="jpeg")  # type: ignore[arg-type]


def test_a_diagram_shows_itself_in_a_notebook() -> None:
    mermaid = machine_diagram()._repr_mimebundle_()
    assert mermaid["text/markdown"].startswith("```mermaid\nstateDiagram-v2\n")
    png = Diagram("png", b"\x89PNG fake")
    assert png._repr_mimebundle_()["image/png"] == "iVBORyBmYWtl"
    assert str(png) == "<PNG diagram, 9 bytes>"
    with pytest.raises(ValueError, match="binary"):
        _ = png.text
    svg = Diagram("svg", b"<svg/>")
    assert svg._repr_mimebundle_()["image/svg+xml"] == "<svg/>"


def test_svg_of_the_machine_is_well_formed_and_names_every_state() -> None:
    pytest.importorskip("pygraphviz")
    svg = machine_diagram(format="svg")
    root = ET.fromstring(svg.data)
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {s.value for s in RunState} <= texts
    assert {r.trigger for r in TRANSITIONS if not r.condition} <= texts
    png = run_diagram(_known_run(), format="png")
    assert png.data.startswith(b"\x89PNG\r\n\x1a\n")


def test_runs_side_by_side_need_at_least_one_and_take_bare_paths() -> None:
    from durable_agent.diagram import runs_diagram

    with pytest.raises(ConfigurationError, match="at least one run"):
        runs_diagram([])
    path = RunPath((Step(2, "start", RunState.PENDING, RunState.MODEL_CALL),),
                   RunState.MODEL_CALL, "a")
    text = runs_diagram([path, path]).text
    assert text.count("state \"run a: MODEL_CALL\"") == 2
    assert "r1_PENDING --> r1_MODEL_CALL : 1. start" in text
    assert "forked at" not in runs_diagram([path, path], format="dot").text
