"""Diagrams of the run state machine and of the path one run took through it.

Everything is drawn from `durable_agent.fsm.TRANSITIONS`, so a diagram can
never disagree with the engine:

- `machine_diagram` draws the whole machine: every state, every table row.
- `run_diagram` draws one run: the edges it took, numbered in the order it
  took them (a loop taken many times shows how often), its current or final
  state highlighted, the states it never visited dimmed.
- `runs_diagram` draws several runs side by side, a fork joined to its source
  (`durable_agent._diagram_runs`).

Mermaid (``stateDiagram-v2``) and Graphviz DOT are pure Python text. SVG and
PNG are rendered from the DOT by Graphviz: the ``pygraphviz`` wheel, which
bundles Graphviz (``pip install "durable-agent[diagrams]"``), or else a
``dot`` program on ``PATH``.

A `Diagram` shows itself in a notebook (SVG and PNG as images, Mermaid as a
Markdown code block that JupyterLab renders):

```python
run_diagram(await backend.load_run(run_id), format="svg")
```
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NamedTuple, TypeAlias, get_args

from durable_agent.errors import ConfigurationError, CorruptRunError
from durable_agent.fsm import FINAL_STATES, TRANSITIONS, RunState, Transition
from durable_agent.records import Event, StoredRun

__all__ = [
    "FORMATS",
    "Diagram",
    "DiagramFormat",
    "RunPath",
    "Step",
    "graphviz_available",
    "machine_diagram",
    "machine_dot",
    "machine_mermaid",
    "render_dot",
    "run_diagram",
    "run_dot",
    "run_mermaid",
    "runs_diagram",
]

DiagramFormat: TypeAlias = Literal["mermaid", "dot", "svg", "png"]
"""What a diagram is written as: Mermaid or DOT text, or an SVG or PNG image."""

FORMATS: Final[tuple[DiagramFormat, ...]] = get_args(DiagramFormat)
"""Every `DiagramFormat`, text formats first."""

INITIAL_STATE: Final = RunState.PENDING
"""Where every run starts (the machine's initial state)."""

_INSTALL_HINT: Final = (
    "pip install 'durable-agent[diagrams]' (pygraphviz, whose wheel bundles Graphviz) "
    "or install Graphviz so that `dot` is on PATH"
)

# Colours shared by the DOT output of both diagrams (and echoed in the Mermaid classDefs).
_INK: Final = "#1f2937"
_VISITED_FILL: Final = "#dbeafe"
_VISITED_LINE: Final = "#1d4ed8"
_CURRENT_FILL: Final = "#fde68a"
_CURRENT_LINE: Final = "#b45309"
_DIM_FILL: Final = "#f9fafb"
_DIM_LINE: Final = "#d1d5db"
_DIM_TEXT: Final = "#9ca3af"


# -- a diagram ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Diagram:
    """A drawn diagram: its `format` and its bytes (UTF-8 text for mermaid, dot and svg)."""

    format: DiagramFormat
    data: bytes

    @property
    def text(self) -> str:
        """The diagram as text; a PNG has none (`ValueError`)."""
        if self.format == "png":
            raise ValueError("a PNG diagram is binary: use .data or .save(path)")
        return self.data.decode("utf-8")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the diagram to ``path`` and return it as a `Path`."""
        target = Path(path)
        target.write_bytes(self.data)
        return target

    def __str__(self) -> str:
        if self.format == "png":
            return f"<PNG diagram, {len(self.data)} bytes>"
        return self.text

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, str]:
        """How Jupyter shows it: an image, or Mermaid as Markdown (JupyterLab renders it)."""
        match self.format:
            case "svg":
                return {"image/svg+xml": self.text, "text/plain": "<SVG diagram>"}
            case "png":
                encoded = base64.b64encode(self.data).decode("ascii")
                return {"image/png": encoded, "text/plain": str(self)}
            case "mermaid":
                return {"text/markdown": f"```mermaid\n{self.text}```\n", "text/plain": self.text}
            case "dot":
                return {"text/plain": self.text}


def _check_format(format: object) -> DiagramFormat:
    for known in FORMATS:
        if format == known:
            return known
    raise ConfigurationError(f"unknown diagram format {format!r}; use one of {', '.join(FORMATS)}")


# -- one run's path --------------------------------------------------------------------------


class Step(NamedTuple):
    """One transition a run took: the event ``seq`` that recorded it and the edge."""

    seq: int
    trigger: str
    source: RunState
    dest: RunState


@dataclass(frozen=True, slots=True)
class RunPath:
    """The transitions one run took, in order, and the state it is in now.

    Build it from a stored run's events with `RunPath.from_events`, or keep
    ``steps`` as a run goes (one `Step` per event whose ``trigger`` is set).
    """

    steps: tuple[Step, ...]
    state: RunState
    """The run's current (or final) state."""
    run_id: str | None = None

    @classmethod
    def from_events(cls, events: Iterable[Event], *, run_id: str | None = None) -> RunPath:
        """Replay ``events`` (in ``seq`` order) against the table.

        Raises `CorruptRunError` when an event claims a move the table has no
        row for (a log the engine could not have written).
        """
        state = INITIAL_STATE
        steps: list[Step] = []
        for event in events:
            if event.trigger is None:
                if event.state is not state:
                    raise CorruptRunError(
                        run_id or "?",
                        event.seq,
                        f"{event.kind} event moves {state} to {event.state} without a trigger",
                    )
                continue
            if _row(event.trigger, state, event.state) is None:
                raise CorruptRunError(
                    run_id or "?",
                    event.seq,
                    f"{state} --{event.trigger}--> {event.state} is not a row of fsm.TRANSITIONS",
                )
            steps.append(Step(event.seq, event.trigger, state, event.state))
            state = event.state
        return cls(steps=tuple(steps), state=state, run_id=run_id)

    @classmethod
    def from_stored(cls, run: StoredRun) -> RunPath:
        """The path of a run loaded with `Backend.load_run`."""
        return cls.from_events(run.events, run_id=run.header.run_id)

    @property
    def visited(self) -> frozenset[RunState]:
        """Every state the run has been in, the initial one included."""
        return frozenset({INITIAL_STATE, self.state, *(s.dest for s in self.steps)})

    def edges(self) -> dict[Transition, tuple[int, ...]]:
        """Each table row the run took, with the step numbers (from 1) that took it."""
        taken: dict[Transition, list[int]] = {}
        for number, step in enumerate(self.steps, start=1):
            row = _row(step.trigger, step.source, step.dest)
            assert row is not None, step  # from_events checked it
            taken.setdefault(row, []).append(number)
        return {row: tuple(numbers) for row, numbers in taken.items()}


def _row(trigger: str, source: RunState, dest: RunState) -> Transition | None:
    for row in TRANSITIONS:
        if row.trigger == trigger and row.source is source and row.dest is dest:
            return row
    return None


def _step_label(trigger: str, numbers: Sequence[int]) -> str:
    """``1. start``; ``2, 4, 6. tool_calls``; a long loop: ``2, 4 … 40. tool_calls (20 times)``."""
    if len(numbers) <= 3:
        return f"{', '.join(map(str, numbers))}. {trigger}"
    return f"{numbers[0]}, {numbers[1]} … {numbers[-1]}. {trigger} ({len(numbers)} times)"


def _row_label(row: Transition) -> str:
    if row.condition is None:
        return row.trigger
    # The only guarded rows are `resume`'s, which return to the state the run failed in.
    return f"{row.trigger} (failed in {row.dest.value})"


# -- Mermaid --------------------------------------------------------------------------------


def machine_mermaid() -> str:
    """The machine as a Mermaid ``stateDiagram-v2``: one line per table row."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL_STATE.value}"]
    lines += [f"    {r.source.value} --> {r.dest.value} : {_row_label(r)}" for r in TRANSITIONS]
    lines += [f"    {s.value} --> [*]" for s in RunState if s in FINAL_STATES]
    return "\n".join(lines) + "\n"


def run_mermaid(path: RunPath) -> str:
    """One run's path as a Mermaid ``stateDiagram-v2``.

    Only the edges the run took are drawn (a state diagram cannot dim an
    edge; the DOT and image output also draw the others, greyed); every state
    appears, the unvisited ones dimmed.
    """
    lines = [
        "stateDiagram-v2",
        f"    classDef visited fill:{_VISITED_FILL},stroke:{_VISITED_LINE},color:{_INK}",
        f"    classDef current fill:{_CURRENT_FILL},stroke:{_CURRENT_LINE},stroke-width:3px,"
        f"color:{_INK}",
        f"    classDef unvisited fill:{_DIM_FILL},stroke:{_DIM_LINE},color:{_DIM_TEXT}",
        f"    [*] --> {INITIAL_STATE.value}",
    ]
    lines += [
        f"    {row.source.value} --> {row.dest.value} : {_step_label(row.trigger, numbers)}"
        for row, numbers in path.edges().items()
    ]
    if path.state in FINAL_STATES:
        lines.append(f"    {path.state.value} --> [*]")
    for css, states in _state_classes(path).items():
        if states:
            lines.append(f"    class {', '.join(s.value for s in states)} {css}")
    return "\n".join(lines) + "\n"


def _state_classes(path: RunPath) -> dict[str, list[RunState]]:
    visited = path.visited
    return {
        "visited": [s for s in RunState if s in visited and s is not path.state],
        "current": [path.state],
        "unvisited": [s for s in RunState if s not in visited],
    }


# -- Graphviz DOT -------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**attrs: str | int | float) -> str:
    """`` [k="v", ...]`` (with its leading space), or nothing when there are none."""
    if not attrs:
        return ""
    return " [" + ", ".join(f"{k}={_quote(str(v))}" for k, v in attrs.items()) + "]"


def _dot_header(name: str, title: str | None) -> list[str]:
    # Top to bottom, tightly spaced, in large type: the picture comes out about
    # as wide as a docs page, so it is not scaled down to unreadable labels.
    lines = [
        f"digraph {name} {{",
        "    rankdir=TB;",
        '    fontname="Helvetica"; fontsize=14; nodesep=0.3; ranksep=0.5;',
        f'    node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=14, '
        f'color="{_INK}", fillcolor="#ffffff", fontcolor="{_INK}"];',
        f'    edge [fontname="Helvetica", fontsize=13, color="{_INK}", fontcolor="{_INK}"];',
        # A point has no label. (Setting label="" on one node would make "" every
        # node's default label: Graphviz declares an attribute on first use.)
        f'    __start__ [shape=point, width=0.15, color="{_INK}", fillcolor="{_INK}"];',
    ]
    if title:
        lines.append(f"    label={_quote(title)}; labelloc=t;")
    return lines


def machine_dot() -> str:
    """The machine as Graphviz DOT: one edge per table row; final states drawn double."""
    lines = _dot_header("run_state_machine", None)
    for state in RunState:
        extra = {"peripheries": 2} if state in FINAL_STATES else {}
        lines.append(f"    {state.value}{_attrs(**extra)};")
    lines.append(f"    __start__ -> {INITIAL_STATE.value};")
    for row in TRANSITIONS:
        # Every non-final state can be cancelled: draw those rows lighter so the
        # main path stays readable.
        style = {"style": "dashed", "color": "#6b7280"} if row.trigger == "cancel" else {}
        lines.append(
            f"    {row.source.value} -> {row.dest.value}{_attrs(label=_row_label(row), **style)};"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def run_dot(path: RunPath) -> str:
    """One run's path as Graphviz DOT: taken edges bold and numbered, the rest greyed."""
    title = f"run {path.run_id}: {path.state.value}" if path.run_id else None
    lines = _dot_header("run_path", title)
    visited = path.visited
    for state in RunState:
        attrs: dict[str, str | int | float] = {}
        if state in FINAL_STATES:
            attrs["peripheries"] = 2
        if state is path.state:
            attrs |= {"fillcolor": _CURRENT_FILL, "color": _CURRENT_LINE, "penwidth": 3}
        elif state in visited:
            attrs |= {"fillcolor": _VISITED_FILL, "color": _VISITED_LINE}
        else:
            attrs |= {"fillcolor": _DIM_FILL, "color": _DIM_LINE, "fontcolor": _DIM_TEXT}
        lines.append(f"    {state.value}{_attrs(**attrs)};")
    lines.append(f"    __start__ -> {INITIAL_STATE.value}{_attrs(color=_VISITED_LINE)};")
    taken = path.edges()
    for row in TRANSITIONS:
        numbers = taken.get(row)
        if numbers:
            attrs = {
                "label": _step_label(row.trigger, numbers),
                "color": _VISITED_LINE,
                "fontcolor": _VISITED_LINE,
                "penwidth": 2.5,
            }
        else:
            attrs = {"label": _row_label(row), "color": _DIM_LINE, "fontcolor": _DIM_TEXT}
        lines.append(f"    {row.source.value} -> {row.dest.value}{_attrs(**attrs)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- rendering ----------------------------------------------------------------------------------


def graphviz_available() -> bool:
    """Whether SVG and PNG can be rendered here (pygraphviz, or ``dot`` on PATH)."""
    return _pygraphviz() is not None or shutil.which("dot") is not None


def _pygraphviz() -> object | None:
    try:
        return importlib.import_module("pygraphviz")
    except ImportError:
        return None


def render_dot(dot: str, *, format: Literal["svg", "png"]) -> bytes:
    """Lay out DOT text with Graphviz's ``dot`` and return the SVG or PNG bytes.

    Uses pygraphviz when installed, else the ``dot`` program; raises
    `ConfigurationError` naming the install command when neither is there.
    """
    if format not in ("svg", "png"):
        raise ConfigurationError(f"render_dot(format={format!r}): use 'svg' or 'png'")
    pgv = _pygraphviz()
    if pgv is not None:
        graph = pgv.AGraph(string=dot)  # type: ignore[attr-defined]
        with _without_fontconfig_noise():
            data = graph.draw(format=format, prog="dot")
        return bytes(data)
    program = shutil.which("dot")
    if program is None:
        raise ConfigurationError(f"rendering {format.upper()} needs Graphviz: {_INSTALL_HINT}")
    done = subprocess.run(
        [program, f"-T{format}"], input=dot.encode(), capture_output=True, check=False
    )
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise ConfigurationError(
            f"Graphviz ({program}) failed with exit code {done.returncode}: "
            f"{detail[-1] if detail else 'no message'}"
        )
    return done.stdout


@contextlib.contextmanager
def _without_fontconfig_noise() -> Iterator[None]:
    """Drop the "Fontconfig warning" lines the bundled library writes to fd 2.

    The fontconfig inside the pygraphviz wheel is older than the system's
    configuration files on recent distributions and complains about elements it
    does not know, on every process's first layout. The warning is harmless;
    any other line is passed through to stderr.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (notebook, capture)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            kept = [
                line
                for line in sink.read().decode(errors="replace").splitlines(keepends=True)
                if not line.startswith("Fontconfig warning")
            ]
            if kept:
                sys.stderr.write("".join(kept))


# -- the public entry points -----------------------------------------------------------------


def _finish(text: Callable[[], str], dot: Callable[[], str], format: DiagramFormat) -> Diagram:
    match format:
        case "mermaid":
            return Diagram("mermaid", text().encode())
        case "dot":
            return Diagram("dot", dot().encode())
        case "svg" | "png":
            return Diagram(format, render_dot(dot(), format=format))


def machine_diagram(*, format: DiagramFormat = "mermaid") -> Diagram:
    """The whole run state machine, drawn from `fsm.TRANSITIONS`."""
    return _finish(machine_mermaid, machine_dot, _check_format(format))


def run_diagram(
    run: StoredRun | RunPath | Iterable[Event], *, format: DiagramFormat = "mermaid"
) -> Diagram:
    """The path one run took: a stored run, its events, or a `RunPath`."""
    checked = _check_format(format)
    if isinstance(run, RunPath):
        path = run
    elif isinstance(run, StoredRun):
        path = RunPath.from_stored(run)
    else:
        path = RunPath.from_events(run)
    return _finish(lambda: run_mermaid(path), lambda: run_dot(path), checked)


def runs_diagram(
    runs: Sequence[StoredRun | RunPath], *, format: DiagramFormat = "mermaid"
) -> Diagram:
    """Several runs side by side, each as `run_diagram` draws it; a fork names its source.

    In DOT (and SVG, PNG) a dashed edge joins the source's state at the fork
    point to the fork's, when both runs are given.
    """
    from durable_agent._diagram_runs import drawn, runs_dot, runs_mermaid

    checked = _check_format(format)
    if not runs:
        raise ConfigurationError("runs_diagram() needs at least one run")
    items = [drawn(r) for r in runs]
    return _finish(lambda: runs_mermaid(items), lambda: runs_dot(items), checked)
