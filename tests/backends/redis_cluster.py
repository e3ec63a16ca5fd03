"""A private Redis Cluster for tests: three masters on free local ports, no replicas.

`redis_cluster_url` is the pytest fixture (one cluster per test session): it
starts ``redis-server --cluster-enabled yes`` three times, joins them with
``redis-cli --cluster create`` and waits for ``cluster_state:ok``; it yields a
``redis+cluster://`` URL naming the first node. Without the binaries it uses
``DURABLE_AGENT_TEST_REDIS_CLUSTER_URL``, else the tests skip with the reason,
except under CI (``CI=true``), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.backends.redis_server import PortTakenError, free_port, server_pid

ENV_URL = "DURABLE_AGENT_TEST_REDIS_CLUSTER_URL"


class RedisClusterProcesses:
    """``masters`` cluster-enabled redis-servers on 127.0.0.1, joined into one cluster."""

    def __init__(self, folder: Path, masters: int = 3) -> None:
        self.folder = folder
        # The cluster bus port is given explicitly (Redis >= 7), so port + 10000
        # need not be free, or even exist.
        self.ports = [(free_port(), free_port()) for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0][0]}"

    def start(self) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        assert server is not None, "redis-server is not on PATH"
        assert cli is not None, "redis-cli is not on PATH"
        # A port picked by free_port() may be taken before the server binds it
        # (another test session on the machine starts servers too): pick again.
        for attempt in range(5):
            try:
                self._start_servers(server)
                break
            except PortTakenError as taken:
                self.stop()
                if attempt == 4:
                    raise RuntimeError("the cluster found no free ports in 5 tries") from taken
                self.ports = [(free_port(), free_port()) for _ in self.ports]
        nodes = [f"127.0.0.1:{port}" for port, _ in self.ports]
        created = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        for (port, _), proc in zip(self.ports, self.procs, strict=True):
            self._wait(proc, lambda port=port: "cluster_state:ok" in self._info(cli, port), port)

    def _start_servers(self, server: str) -> None:
        for port, bus in self.ports:
            where = self.folder / str(port)
            where.mkdir(parents=True, exist_ok=True)
            args = [server, "--port", str(port), "--bind", "127.0.0.1"]
            args += ["--cluster-enabled", "yes", "--cluster-port", str(bus)]
            args += ["--cluster-config-file", str(where / "nodes.conf")]
            args += ["--save", "", "--appendonly", "no", "--dir", str(where)]
            args += ["--protected-mode", "no", "--logfile", str(where / "redis.log")]
            self.procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            )
        for (port, _), proc in zip(self.ports, self.procs, strict=True):
            # Our own process answers, not another session's server on that port.
            self._wait(proc, lambda port=port, proc=proc: server_pid(port) == proc.pid, port)

    def _wait(
        self,
        proc: subprocess.Popen[bytes],
        ready: Callable[[], bool],
        port: int,
        limit: float = 60.0,
    ) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = self.folder / str(port) / "redis.log"
                err = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                if "Address already in use" in err:
                    raise PortTakenError(err)
                raise RuntimeError(f"a cluster redis-server exited: {err}")
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"the Redis Cluster was not ready within {limit} s")

    @staticmethod
    def _ask(cli: str, port: int, *command: str) -> str:
        try:
            done = subprocess.run(
                [cli, "-p", str(port), *command], capture_output=True, text=True, timeout=5
            )
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.strip()

    @classmethod
    def _info(cls, cli: str, port: int) -> str:
        return cls._ask(cli, port, "CLUSTER", "INFO")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()
        self.procs = []

    def __enter__(self) -> RedisClusterProcesses:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_unavailable() -> str | None:
    """Why Redis Cluster tests cannot run here, or None when they can."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (pip install 'durable-agent[redis]')"
    if os.environ.get(ENV_URL):
        return None
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        return f"{' and '.join(missing)} not on PATH and {ENV_URL} is not set"
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the Redis Cluster tests, but {reason}")
    pytest.skip(reason)


_shared: list[RedisClusterProcesses] = []
_users = 0


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster for the tests: three private masters, else $ENV_URL, else skip.

    Test modules import this fixture; they all share one cluster, stopped when
    the last of them is done.
    """
    global _users
    reason = cluster_unavailable()
    if reason is not None:
        skip_or_fail(reason)
    if os.environ.get(ENV_URL):
        yield os.environ[ENV_URL]
        return
    if not _shared:
        processes = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
        try:
            _shared.append(processes.__enter__())
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            skip_or_fail(f"a local Redis Cluster did not start: {exc}")
    _users += 1
    try:
        yield _shared[0].url
    finally:
        _users -= 1
        if not _users:
            _shared.pop().stop()
