"""Regenerate the inspector's screenshots in docs/img/ (docs/inspector.md shows them).

    python docs/_tools/screenshots.py

Builds a store of real runs (tests/ui/scenario.py: one SIGKILLed and resumed
in new processes, one waiting for approval), serves it with ``durable-agent
ui`` on a free loopback port and photographs the list, the crashed run and
the approval with Debian's headless chromium (``apt-get install chromium``)
driven by Playwright. Offline; nothing is downloaded.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.ui import scenario, server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
IMG = ROOT / "docs" / "img"


def main() -> int:
    """Take the three screenshots; return the exit status."""
    with tempfile.TemporaryDirectory() as folder:
        db = scenario.build_store(Path(folder))
        running = server.start(db, extra=["--agent", "tests.ui.scenario:support"])
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM)
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                page.goto(running.login)
                page.screenshot(path=IMG / "inspector-runs.png", full_page=True)
                page.goto(f"{running.url}/run?id={scenario.CRASHED}")
                page.screenshot(path=IMG / "inspector-crash.png", full_page=True)
                page.goto(f"{running.url}/run?id={scenario.WAITING}")
                page.locator("#decide").screenshot(path=IMG / "inspector-approval.png")
                browser.close()
        finally:
            running.stop()
    for name in ("runs", "crash", "approval"):
        print(f"wrote {IMG / f'inspector-{name}.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
