"""Several runs' paths side by side: a fork beside the run it was forked from.

Each run is drawn as in `durable_agent.diagram.run_diagram` (the edges it
took, numbered; its state highlighted) inside a box of its own, titled with
its id, its state and, for a fork, where it came from. In DOT a dashed
``forked at seq N`` edge joins the source's state at that seq to the fork's.
`durable_agent.diagram.runs_diagram` is the public entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from durable_agent.diagram import (
    _CURRENT_FILL,
    _CURRENT_LINE,
    _DIM_FILL,
    _DIM_LINE,
    _DIM_TEXT,
    _INK,
    _VISITED_FILL,
    _VISITED_LINE,
    INITIAL_STATE,
    RunPath,
    _attrs,
    _quote,
    _row_label,
    _state_classes,
    _step_label,
)
from durable_agent.fsm import FINAL_STATES, TRANSITIONS, RunState
from durable_agent.records import CreatedEvent, StoredRun

__all__ = ["Drawn", "drawn", "runs_dot", "runs_mermaid"]


@dataclass(frozen=True, slots=True)
class Drawn:
    """One run to draw: its path and, for a fork, the run and seq it was copied from."""

    path: RunPath
    forked_from: tuple[str, int] | None = None

    @property
    def title(self) -> str:
        name = f"run {self.path.run_id}: {self.path.state.value}"
        if self.forked_from is None:
            return name
        source, seq = self.forked_from
        return f"{name} (forked from {source} at seq {seq})"


def drawn(run: StoredRun | RunPath) -> Drawn:
    """A stored run (whose first event says whether it is a fork) or a bare path."""
    if isinstance(run, RunPath):
        return Drawn(run)
    first = run.events[0] if run.events else None
    origin = first.forked_from if isinstance(first, CreatedEvent) else None
    return Drawn(
        RunPath.from_stored(run), (origin.run_id, origin.seq) if origin is not None else None
    )


def _state_at(path: RunPath, seq: int) -> RunState:
    """The state ``path`` was in right after its event ``seq``."""
    state = INITIAL_STATE
    for step in path.steps:
        if step.seq > seq:
            break
        state = step.dest
    return state


def runs_mermaid(runs: Sequence[Drawn]) -> str:
    """The runs as one Mermaid ``stateDiagram-v2``, one composite state per run, left to right."""
    lines = [
        "stateDiagram-v2",
        "    direction LR",
        f"    classDef visited fill:{_VISITED_FILL},stroke:{_VISITED_LINE},color:{_INK}",
        f"    classDef current fill:{_CURRENT_FILL},stroke:{_CURRENT_LINE},stroke-width:3px,"
        f"color:{_INK}",
        f"    classDef unvisited fill:{_DIM_FILL},stroke:{_DIM_LINE},color:{_DIM_TEXT}",
    ]
    for index, run in enumerate(runs):
        path, p = run.path, f"r{index}_"
        lines.append(f"    state {_quote(run.title)} as run{index} {{")
        lines += [f"        state {_quote(s.value)} as {p}{s.value}" for s in RunState]
        lines.append(f"        [*] --> {p}{INITIAL_STATE.value}")
        lines += [
            f"        {p}{row.source.value} --> {p}{row.dest.value} : "
            f"{_step_label(row.trigger, numbers)}"
            for row, numbers in path.edges().items()
        ]
        if path.state in FINAL_STATES:
            lines.append(f"        {p}{path.state.value} --> [*]")
        lines.append("    }")
        for css, states in _state_classes(path).items():
            if states:
                lines.append(f"    class {', '.join(p + s.value for s in states)} {css}")
    return "\n".join(lines) + "\n"


def runs_dot(runs: Sequence[Drawn]) -> str:
    """The runs as Graphviz DOT: one cluster per run, and an edge from each source to its fork."""
    lines = [
        "digraph run_paths {",
        "    rankdir=TB; newrank=true;",
        '    fontname="Helvetica"; fontsize=14; nodesep=0.3; ranksep=0.5;',
        f'    node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=14, '
        f'color="{_INK}", fillcolor="#ffffff", fontcolor="{_INK}"];',
        f'    edge [fontname="Helvetica", fontsize=13, color="{_INK}", fontcolor="{_INK}"];',
    ]
    for index, run in enumerate(runs):
        lines += _cluster(index, run)
    index_of = {run.path.run_id: i for i, run in enumerate(runs)}
    for index, run in enumerate(runs):
        if run.forked_from is None or run.forked_from[0] not in index_of:
            continue
        source_id, seq = run.forked_from
        source = index_of[source_id]
        at = _state_at(runs[source].path, seq).value
        mine = _state_at(run.path, seq).value
        lines.append(
            f"    r{source}_{at} -> r{index}_{mine}"
            f"{_attrs(label=f'forked at seq {seq}', style='dashed', constraint='false')};"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _cluster(index: int, run: Drawn) -> list[str]:
    path, p = run.path, f"r{index}_"
    lines = [
        f"    subgraph cluster_{index} {{",
        f"        label={_quote(run.title)}; labelloc=t;",
        f'        {p}start [shape=point, width=0.15, color="{_INK}", fillcolor="{_INK}"];',
    ]
    visited = path.visited
    for state in RunState:
        attrs: dict[str, str | int | float] = {"label": state.value}
        if state in FINAL_STATES:
            attrs["peripheries"] = 2
        if state is path.state:
            attrs |= {"fillcolor": _CURRENT_FILL, "color": _CURRENT_LINE, "penwidth": 3}
        elif state in visited:
            attrs |= {"fillcolor": _VISITED_FILL, "color": _VISITED_LINE}
        else:
            attrs |= {"fillcolor": _DIM_FILL, "color": _DIM_LINE, "fontcolor": _DIM_TEXT}
        lines.append(f"        {p}{state.value}{_attrs(**attrs)};")
    lines.append(f"        {p}start -> {p}{INITIAL_STATE.value}{_attrs(color=_VISITED_LINE)};")
    taken = path.edges()
    for row in TRANSITIONS:
        numbers = taken.get(row)
        if numbers:
            edge: dict[str, str | int | float] = {
                "label": _step_label(row.trigger, numbers),
                "color": _VISITED_LINE,
                "fontcolor": _VISITED_LINE,
                "penwidth": 2.5,
            }
        else:
            edge = {"label": _row_label(row), "color": _DIM_LINE, "fontcolor": _DIM_TEXT}
        lines.append(f"        {p}{row.source.value} -> {p}{row.dest.value}{_attrs(**edge)};")
    lines.append("    }")
    return lines
