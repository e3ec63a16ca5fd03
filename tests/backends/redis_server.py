"""A private ``redis-server`` for tests: started on a free port, killed and restarted at will.

`redis_url` is the pytest fixture the Redis tests use: a private server when
the binary is on PATH, else ``DURABLE_AGENT_TEST_REDIS_URL``, else a skip with
the reason; under CI (``CI=true``) a missing Redis fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV_URL = "DURABLE_AGENT_TEST_REDIS_URL"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``kill`` then ``start`` keeps the port."""

    def __init__(self, folder: Path, *, appendonly: bool = False, port: int | None = None) -> None:
        self.folder = folder
        self.appendonly = appendonly
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not on PATH"
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.folder), "--protected-mode", "no"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # A deadline that bounds a failure: a loaded machine may take seconds to start it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited at once: {err}")
            if self._answers():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 60 s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is flushed beyond what fsync already did)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def redis_available() -> str | None:
    """Why Redis tests cannot run here, or None when they can."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (pip install 'durable-agent[redis]')"
    if shutil.which("redis-server") is None and not os.environ.get(ENV_URL):
        return f"redis-server is not on PATH and {ENV_URL} is not set"
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the Redis tests, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis for the tests: private server, else $DURABLE_AGENT_TEST_REDIS_URL, else skip."""
    reason = redis_available()
    if reason is not None:
        skip_or_fail(reason)
    if shutil.which("redis-server") is None:
        yield os.environ[ENV_URL]
        return
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url
