"""`backends/` ships as `durable_agent.backends`: in the wheel, editable and under mypy."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("durable_agent-*.whl")
    return built


def test_wheel_holds_backends_inside_the_package_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "durable_agent/backends/__init__.py" in names
    assert "durable_agent/backends/sqlite.py" in names
    assert "durable_agent/backends/memory.py" in names
    assert "durable_agent/py.typed" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"durable_agent", "durable_agent-0.1.0.dist-info"}, tops


def test_backends_import_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True,
        capture_output=True,
    )
    deps = sysconfig.get_paths()["purelib"]
    # -S skips site, so the editable install's import hook is not loaded: only
    # the wheel's copy (and the dependencies' folder) can be imported.
    code = (
        f"import sys; sys.path[:0] = [{str(target)!r}, {deps!r}]\n"
        "import durable_agent.backends.sqlite as s, durable_agent\n"
        "print(durable_agent.__file__)\n"
        "try:\n    import backends\nexcept ImportError:\n    print('no top-level backends')\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith(str(target))
    assert lines[1] == "no top-level backends"


def test_editable_install_exposes_no_top_level_backends(tmp_path: Path) -> None:
    code = (
        "import durable_agent.backends.memory\n"
        "try:\n    import backends\nexcept ImportError:\n    print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert done.stdout.strip() == "ok"


def test_mypy_resolves_the_backends_package(tmp_path: Path) -> None:
    snippet = tmp_path / "uses_backends.py"
    snippet.write_text(
        "from durable_agent.backends.sqlite import SqliteBackend\n"
        "from durable_agent.backends.memory import MemoryBackend\n"
        "from durable_agent import Backend\n"
        "stores: list[Backend] = [SqliteBackend('x.db'), MemoryBackend()]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(snippet)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_wheel_ships_every_inspector_asset(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    here = Path(__file__).resolve().parents[2] / "durable_agent" / "ui"
    assets = [p for p in here.rglob("*") if p.is_file() and p.suffix in {".html", ".js", ".css"}]
    assert len(assets) >= 8
    for asset in assets:
        assert f"durable_agent/ui/{asset.relative_to(here).as_posix()}" in names, asset
