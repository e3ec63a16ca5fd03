"""A private ``redis-server`` for tests: started on a free port, killed and restarted at will.

`redis_url` is the pytest fixture the Redis tests use: a private server when
the binary is on PATH, else ``DURABLE_AGENT_TEST_REDIS_URL``, else a skip with
the reason; under CI (``CI=true``) a missing Redis fails instead of skipping.
"""

from __future__ import annotations

import os
import re
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


def server_pid(port: int) -> int | None:
    """The pid of the redis-server answering on ``port`` (None while none answers)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"INFO server\r\n")
            data = b""
            while (found := re.search(rb"process_id:(\d+)\r\n", data)) is None:
                chunk = sock.recv(4096)
                if not chunk or len(data) > 65536:
                    return None
                data += chunk
            return int(found.group(1))
    except OSError:
        return None


class PortTakenError(Exception):
    """The port picked for a server was taken before the server could bind it."""


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``kill`` then ``start`` keeps the port."""

    def __init__(self, folder: Path, *, appendonly: bool = False, port: int | None = None) -> None:
        self.folder = folder
        self.appendonly = appendonly
        self.port = port or free_port()
        # A port we picked may be taken between free_port() and the bind (another
        # test session on the machine starts its servers too): then pick again,
        # but only before the first start; a restart must keep its port.
        self._may_move = port is None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        for _ in range(5):
            try:
                self._start()
            except PortTakenError:
                self.port = free_port()
                continue
            self._may_move = False
            return
        raise RuntimeError("redis-server found no free port in 5 tries")

    def _start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not on PATH"
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.folder), "--protected-mode", "no"]
        args += ["--logfile", str(self.folder / "redis.log")]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # A deadline that bounds a failure: a loaded machine may take seconds to start it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.kill()
                err = self._log_tail()
                if self._may_move and "Address already in use" in err:
                    raise PortTakenError(err)
                raise RuntimeError(f"redis-server exited at once: {err}")
            if self._answers():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"redis-server on port {self.port} did not answer within 60 s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        log = self.folder / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def _answers(self) -> bool:
        # Our process (not another session's server that won the race for the
        # port), done loading its append-only file (PING is refused until then).
        if self.proc is None or server_pid(self.port) != self.proc.pid:
            return False
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
