"""The docs' diagrams are what fsm.py generates, and the CLI page documents every command."""

from __future__ import annotations

import importlib.util
import re
import xml.etree.ElementTree as ET
from collections import Counter
from types import ModuleType

import click

from durable_agent.cli import cli
from durable_agent.diagram import RunPath, machine_dot, run_dot
from durable_agent.fsm import RunState
from tests.cli.scenario import ROOT

DOCS = ROOT / "docs"
REGENERATE = "python docs/_tools/gen_diagrams.py"
SVG = "{http://www.w3.org/2000/svg}"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_diagrams", DOCS / "_tools" / "gen_diagrams.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_mermaid_in_the_state_machine_page_is_what_fsm_generates() -> None:
    generator = _generator()
    committed = generator.committed_blocks((DOCS / "state-machine.md").read_text())
    generated = generator.generated_blocks()
    assert set(committed) == {"machine", "example-run"}
    for name, text in generated.items():
        assert committed[name] == text, f"docs/state-machine.md is stale: run {REGENERATE}"


def test_the_committed_images_draw_every_state() -> None:
    for image, extra in (("machine.svg", "final_answer"), ("run-path.svg", "run refund-42: DONE")):
        root = ET.fromstring((DOCS / "img" / image).read_bytes())
        texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
        assert {s.value for s in RunState} <= texts, f"docs/img/{image} is stale: run {REGENERATE}"
        assert extra in texts
    page = (DOCS / "state-machine.md").read_text()
    assert "](img/machine.svg)" in page
    assert "](img/run-path.svg)" in page


def _svg_texts(image: str) -> Counter[str | None]:
    root = ET.fromstring((DOCS / "img" / image).read_bytes())
    return Counter(t.text for t in root.iter(f"{SVG}text"))


def _dot_texts(dot: str) -> Counter[str | None]:
    """The lines of text Graphviz draws for ``dot``: each label's lines, each state's name."""
    texts: Counter[str | None] = Counter(s.value for s in RunState)
    for label in re.findall(r'label="((?:[^"\\]|\\.)*)"', dot):
        texts.update(line.replace('\\"', '"') for line in label.split("\\n"))
    return texts


def test_the_committed_images_have_the_labels_fsm_generates() -> None:
    generator = _generator()
    path = RunPath.from_stored(generator.example_run())
    for image, dot in (("machine.svg", machine_dot()), ("run-path.svg", run_dot(path))):
        assert _svg_texts(image) == _dot_texts(dot), f"docs/img/{image} is stale: run {REGENERATE}"


def test_the_committed_images_are_readable_at_page_width() -> None:
    # Material scales an image down to its content column (~690 px wide on a
    # desktop screen); a picture drawn much wider has labels too small to read.
    column_px, smallest_px = 690, 10.0
    for image in ("machine.svg", "run-path.svg"):
        root = ET.fromstring((DOCS / "img" / image).read_bytes())
        width_px = float(root.attrib["width"].removesuffix("pt")) * 4 / 3
        scale = min(1.0, column_px / width_px)
        font_px = min(float(t.attrib["font-size"]) for t in root.iter(f"{SVG}text")) * 4 / 3
        assert font_px * scale >= smallest_px, (
            f"docs/img/{image}: its smallest label shows at {font_px * scale:.1f} px "
            f"in a {column_px} px column"
        )


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names: list[str] = []
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            names += _commands(command, f"{prefix}{name} ")
        else:
            names.append(f"{prefix}{name}")
    return names


def test_the_cli_page_documents_every_command() -> None:
    headings = re.findall(r"^## (.+)$", (DOCS / "cli.md").read_text(), re.M)
    documented = " / ".join(headings)
    for command in _commands(cli):
        group, _, name = command.rpartition(" ")
        assert re.search(rf"\b{group}\b.*\b{name}\b" if group else rf"\b{name}\b", documented), (
            f"docs/cli.md has no section for `durable-agent {command}`"
        )
