"""The built documentation site renders right, offline.

The site is built once for this module, the way CI builds it (``mkdocs build
--strict`` into a scratch folder), and the tests read the HTML a browser would
get: the Getting-started steps are one numbered list, the API reference shows
no reStructuredText ``::`` markers, and no page needs the network (the state
diagrams are SVG files shipped with the site, and no page asks Material to
fetch Mermaid from a CDN).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from durable_agent.fsm import RunState

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 300  # seconds; the build takes a few on an idle machine
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)


@dataclass
class Element:
    """One HTML element of a parsed page: enough of a DOM for these checks."""

    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def iter(self, tag: str | None = None) -> Iterator[Element]:
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter(tag)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self, *, skip: frozenset[str] = frozenset()) -> str:
        """The text inside, leaving out whole elements whose tag is in ``skip``."""
        parts: list[str] = []
        for child in self.children:
            if isinstance(child, str):
                parts.append(child)
            elif child.tag not in skip:
                parts.append(child.text(skip=skip))
        return "".join(parts)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(element)
        if tag not in _VOID:
            self._stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        # Close up to the matching open element (HTML lets some end tags be implied).
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


def parse(page: Path) -> Element:
    builder = _TreeBuilder()
    builder.feed(page.read_text(encoding="utf-8"))
    builder.close()
    return builder.root


def article(page: Path) -> Element:
    """The page's content (Material's ``<article>``), without the theme around it."""
    found = [e for e in parse(page).iter("article") if "md-content__inner" in e.classes()]
    assert len(found) == 1, f"{page}: expected one content <article>"
    return found[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built once for the module exactly as CI builds it."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(target)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return target


def _section(content: Element, heading_id: str) -> list[Element]:
    """The elements after the ``<h2 id=heading_id>`` and before the next ``<h2>``."""
    elements = [c for c in content.children if isinstance(c, Element)]
    starts = [
        i for i, e in enumerate(elements) if e.tag == "h2" and e.attrs.get("id") == heading_id
    ]
    assert starts, f"no <h2 id={heading_id!r}>"
    section: list[Element] = []
    for element in elements[starts[0] + 1 :]:
        if element.tag == "h2":
            break
        section.append(element)
    return section


def test_the_getting_started_steps_are_one_numbered_list(site: Path) -> None:
    section = _section(article(site / "index.html"), "getting-started")
    lists = [e for e in section if e.tag == "ol"]
    # A code block or list indented too little for Python-Markdown ends the
    # list: every step then renders as a new list, each numbered "1.".
    assert len(lists) == 1, f"the steps render as {len(lists)} lists, so each restarts at 1"
    steps = [c for c in lists[0].children if isinstance(c, Element) and c.tag == "li"]
    assert len(steps) == 3, [s.text()[:40] for s in steps]
    install, examples, _ = steps
    assert "durable-agent demo" in "".join(p.text() for p in install.iter("pre"))
    linked = {a.text() for a in examples.iter("a")}
    assert "examples/quickstart_offline.py" in linked


def test_the_api_reference_shows_no_restructuredtext_markup(site: Path) -> None:
    # mkdocstrings reads docstrings as Markdown: a reST literal marker (`::`)
    # or simple table (rows of `===`) shows up as text.
    content = article(site / "api" / "index.html")
    prose = content.text(skip=frozenset({"pre", "code", "script"}))
    lines = [line.strip() for line in prose.splitlines() if "::" in line or "===" in line]
    assert not lines, f"docstrings written for reST render as: {lines}"
    # The examples those markers introduced render as code blocks instead,
    # and the tables as tables.
    code = "\n".join(pre.text() for pre in content.iter("pre"))
    assert 'agent = Agent("openai/gpt-4o-mini", db=db, retry=1)' in code
    assert "── ToolError" in code  # the exception tree is a code block
    assert "run_diagram(await backend.load_run(run_id)" in code
    headers = {th.text().strip() for th in content.iter("th")}
    assert {"URL", "backend", "kind", "confirm / approvals"} <= headers


def _off_site(url: str) -> bool:
    return url.startswith(("http:", "https:", "//"))


def test_no_page_loads_anything_from_another_site(site: Path) -> None:
    for page in sorted(site.rglob("*.html")):
        root = parse(page)
        for script in root.iter("script"):
            assert not _off_site(script.attrs.get("src", "")), f"{page}: {script.attrs}"
        for link in root.iter("link"):
            rel = link.attrs.get("rel", "").split()
            if {"stylesheet", "preconnect", "preload", "modulepreload"} & set(rel):
                assert not _off_site(link.attrs.get("href", "")), f"{page}: {link.attrs}"
        for image in root.iter("img"):
            assert not _off_site(image.attrs.get("src", "")), f"{page}: {image.attrs}"


def test_the_state_diagrams_render_with_no_network(site: Path) -> None:
    page = site / "state-machine" / "index.html"
    content = article(page)
    # Material draws a <pre class="mermaid"> with mermaid.js, which it fetches
    # from a CDN unless the site ships its own copy; offline, the diagram
    # stays source text. The site ships none, so there must be no such block.
    drawn_by_mermaid = [pre for pre in content.iter("pre") if "mermaid" in pre.classes()]
    assert not drawn_by_mermaid, "a Mermaid block would need mermaid.js from a CDN"
    images = {img.attrs["src"]: img for img in content.iter("img")}
    for name in ("machine.svg", "run-path.svg"):
        src = f"../img/{name}"
        assert src in images, f"{page} does not show img/{name}"
        svg = ET.fromstring((page.parent / src).read_bytes())
        texts = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
        assert {s.value for s in RunState} <= texts, f"img/{name} lacks a state"
    # The Mermaid text (what `durable-agent diagram` prints) is still there to copy.
    code = "\n".join(pre.text() for pre in content.iter("pre"))
    assert "stateDiagram-v2\n    [*] --> PENDING" in code
