"""Start ``durable-agent ui`` in a child process on a free loopback port, and stop it.

Used by the inspector's tests and by docs/_tools/screenshots.py. The server
is ready when it answers (a barrier with a 60 s deadline, not a sleep).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
DEADLINE: Final = 60.0


def free_port() -> int:
    """A port nobody listens on right now (the server may still lose it: see `start`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A running inspector: its base URL, its token, its process."""

    url: str
    token: str
    process: subprocess.Popen[str]

    @property
    def login(self) -> str:
        """The URL that hands the browser the token (as the command prints it)."""
        return f"{self.url}/?token={self.token}"

    def stop(self) -> None:
        """Stop the server (SIGINT: uvicorn shuts down cleanly) and reap it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.communicate(timeout=DEADLINE)  # reaps it and closes its pipe
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError as exc:
        exc.close()
        return True  # it answered, if only to refuse
    except OSError:
        return False


def start(db: str, *, token: str = "test-token", extra: Sequence[str] = ()) -> Server:
    """``durable-agent ui --db DB --port P --token TOKEN EXTRA…``, answering, on a free port."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DURABLE_AGENT_DB": db}
    for _ in range(5):  # another test session may take the port first: pick again
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "durable_agent", "ui", "--port", str(port),
             "--token", token, *extra],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(f"{url}/static/inspector.css"):
                return Server(url, token, process)
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
        if "address already in use" not in stderr.lower():
            raise RuntimeError(f"the inspector did not start: {stderr}")
    raise RuntimeError("no free port for the inspector after 5 tries")
