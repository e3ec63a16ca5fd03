"""mkdocs hooks: links from the docs to files of the repository outside ``docs/``.

The pages link to ``../examples/*.py`` and ``../README.md`` so that they work
where the Markdown is read in the repository. The site has no such files, and
``mkdocs build --strict`` fails on a link it cannot resolve. These hooks keep
both: every such link must name a file that exists in the repository (else
the build fails, as for any broken link), and the file is copied into the site
under ``source/`` (Markdown as ``.md.txt``, shown as text) with the link
rewritten to it.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.repository_links")

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "source"
_LINK = re.compile(r"\]\((\.\./[^)#\s]+)(#[^)\s]*)?\)")
_wanted: set[str] = set()


def _target(page_src: str, link: str) -> str | None:
    """The repository path ``link`` names from docs/``page_src``, if it leaves docs/."""
    joined = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_src), link))
    if joined.startswith("docs/") or joined.startswith(".."):
        return None
    return joined


def _site_name(repo_path: str) -> str:
    return f"{SOURCE}/{repo_path}" + (".txt" if repo_path.endswith(".md") else "")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    docs = Path(config.docs_dir)
    for md in docs.rglob("*.md"):
        page = md.relative_to(docs).as_posix()
        for match in _LINK.finditer(md.read_text(encoding="utf-8")):
            path = _target(page, match[1])
            if path is not None and (ROOT / path).is_file():
                _wanted.add(path)
    for path in sorted(_wanted):
        files.append(File.generated(config, _site_name(path), abs_src_path=str(ROOT / path)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, **_: Any) -> str:
    def rewrite(match: re.Match[str]) -> str:
        path = _target(page.file.src_uri, match[1])
        if path is None:
            return match[0]
        if not (ROOT / path).is_file():
            log.warning(
                "%s links to %s, which is not a file of the repository", page.file.src_uri, path
            )
            return match[0]
        depth = page.file.src_uri.count("/")
        return f"]({'../' * depth}{_site_name(path)})"

    return _LINK.sub(rewrite, markdown)
