"""Child processes forked from an interpreter that has imported durable_agent already.

Starting Python and importing the package costs ~0.6 s of CPU per child, and the
suite starts hundreds of them (every CLI command, every crash-test process).
`run` starts a *new process* that skips that cost: multiprocessing's forkserver
imports `PRELOAD` once per test session and forks a fresh child per call. The
child then looks like ``python -m MODULE ARGS`` / ``python SCRIPT ARGS`` to the
code under test: its own pid, ``sys.argv``, ``sys.path`` (the working directory
or the script's folder first, then ``PYTHONPATH``), environment, working
directory, and stdin/stdout/stderr on real file descriptors; its exit status is
the one Python gives (0, ``sys.exit``'s code, 1 with a traceback on stderr for an
uncaught exception, ``-signal`` when killed). A SIGKILL kills it as it kills any
process.

What a forked child cannot imitate is Python's own start-up: ``-X``/``-W`` flags,
``sitecustomize``, ``PYTHON*`` variables read by the interpreter, and what a
module does at import time under the child's environment. `forkable` says when
a call needs none of that; callers start a real interpreter otherwise.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PRELOAD = [
    "durable_agent",
    "durable_agent.cli",
    # The CLI imports a command's module when it runs (durable_agent.cli._app.Group):
    # loaded here, a child starts with every command as before.
    *(
        f"durable_agent.cli.{name}"
        for name in (
            "runs",
            "runs_read",
            "runs_follow",
            "runs_write",
            "decide",
            "fork",
            "worker",
            "diagram",
            "demo",
            "crashtest",
            "ui",
            "migrate",
        )
    ),
    "durable_agent.backends.sqlite",
    # The facade and every record validator, built once (records defer them).
    "tests._warm_records",
    # The provider tests' children drive the real SDKs, seconds of imports each.
    # Neither reads an environment variable at import that durable-agent uses.
    "openai",
    "anthropic",
]
"""Imported once by the fork server (a missing one is skipped): what the children import."""

_READING_EXITS = threading.Lock()
"""Held to read a child's exit status, which the fork server sends once, 8 bytes on a pipe.

Two threads reading it at once (a test's threads waiting for children, and
``Process.start``, which polls every child of the process) race: one gets the
status, the other end-of-file, which multiprocessing reports as exit code 255
("perhaps the forkserver process itself got killed") and may keep as the
child's. So every read happens under this lock; once read, the status is kept.
"""

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(PRELOAD)

# sys.path of a fresh ``python -c`` without PYTHONPATH, minus its leading '' (the
# interpreter's own entries: stdlib, site-packages, the editable install's hooks).
_BASE_PATH: list[str] | None = None


def _base_path() -> list[str]:
    global _BASE_PATH
    if _BASE_PATH is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        printed = subprocess.run(
            [sys.executable, "-c", "import sys; print('\\n'.join(sys.path[1:]))"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        _BASE_PATH = printed.stdout.splitlines()
    return _BASE_PATH


def forkable(env: Mapping[str, str]) -> bool:
    """Whether a child with ``env`` may be forked: no interpreter variable differs from ours.

    ``PYTHONPATH`` may name other folders (the child's ``sys.path`` follows it), but
    not a ``sitecustomize``, which only a real start-up runs.
    """
    interpreter = {n for n in {*env, *os.environ} if n.startswith("PYTHON")} - {"PYTHONPATH"}
    if any(env.get(name) != os.environ.get(name) for name in interpreter):
        return False
    folders = [f for f in env.get("PYTHONPATH", "").split(os.pathsep) if f]
    return not any((Path(f) / "sitecustomize.py").exists() for f in folders)


class Forked:
    """A running forked child, with the parts of `subprocess.Popen` the tests use."""

    def __init__(self, process: Any, folder: tempfile.TemporaryDirectory[str], text: bool) -> None:
        self._process = process
        self._folder = folder
        self._text = text
        self.pid: int = process.pid
        self.returncode: int | None = None
        self.args = process.name

    def poll(self) -> int | None:
        if self.returncode is None:
            with _READING_EXITS:
                alive = self._process.is_alive()
            if not alive:
                self._process.join()  # the exit status is read already: returns at once
                self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        # Wait for the exit status to arrive without reading it; `poll` reads it.
        multiprocessing.connection.wait([self._process.sentinel], timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Wait for the exit, then the whole stdout and stderr (str or bytes, as started)."""
        self.wait(timeout)
        return self._read("stdout"), self._read("stderr")

    def _read(self, name: str) -> Any:
        data = (Path(self._folder.name) / name).read_bytes()
        if self._text:
            return data.decode(errors="replace").replace("\r\n", "\n")
        return data

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def close(self) -> None:
        self._process.close()
        self._folder.cleanup()

    def __del__(self) -> None:
        self._folder.cleanup()


def start(
    *,
    module: str | None = None,
    script: Path | None = None,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | bytes | None = None,
    text: bool = True,
) -> Forked:
    """Start ``python -m module args`` or ``python script args`` as a forked child."""
    assert (module is None) != (script is None), "give a module or a script"
    environment = dict(os.environ if env is None else env)
    folder = tempfile.TemporaryDirectory(prefix="forked-")
    where = Path(folder.name)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    (where / "stdin").write_bytes(data or b"")
    workdir = str(cwd or Path.cwd())
    first = str(script.resolve().parent) if script is not None else workdir
    extra = [f for f in environment.get("PYTHONPATH", "").split(os.pathsep) if f]
    path = [first, *(str(Path(workdir, f)) for f in extra), *_base_path()]
    process = _CONTEXT.Process(  # type: ignore[attr-defined]
        target=_child,
        args=(
            module,
            str(script) if script else None,
            list(args),
            environment,
            workdir,
            path,
            str(where),
        ),
        name=f"forked {module or script} {' '.join(args)}"[:200],
        daemon=False,
    )
    with _READING_EXITS:  # start() polls every other child (multiprocessing's _cleanup)
        process.start()
    return Forked(process, folder, text)


def run(
    *,
    module: str | None = None,
    script: Path | None = None,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """`start`, then wait like ``subprocess.run(..., capture_output=True, text=True)``."""
    child = start(module=module, script=script, args=args, env=env, cwd=cwd, stdin=stdin)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(60)
        raise
    finally:
        returncode = child.poll()
    assert returncode is not None
    child.close()
    argv = [sys.executable, *(["-m", module] if module else [str(script)]), *args]
    return subprocess.CompletedProcess(argv, returncode, stdout, stderr)


def _child(
    module: str | None,
    script: str | None,
    args: list[str],
    env: dict[str, str],
    cwd: str,
    path: list[str],
    folder: str,
) -> None:
    """In the forked child: become ``python -m module`` / ``python script`` and run it."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    where = Path(folder)
    for fd, name, flags in (
        (0, "stdin", os.O_RDONLY),
        (1, "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(where / name, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    # New standard streams on the new descriptors, set up as Python sets them up
    # for files (block-buffered stdout, line-buffered stderr, utf-8 by the locale).
    # The streams live as long as the process, as Python's own do.
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(  # noqa: SIM115
        2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    sys.path[:] = path
    sys.argv = ["", *args]
    # The exit status follows Python's: multiprocessing turns SystemExit into the
    # exit code and prints an uncaught exception's traceback to stderr, exiting 1.
    if module is not None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        assert script is not None
        sys.argv[0] = script
        runpy.run_path(script, run_name="__main__")
