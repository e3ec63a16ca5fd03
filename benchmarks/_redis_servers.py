"""Private Redis servers for the benchmarks: one ``redis-server``, or a local three-master cluster.

Each is a context manager that yields the URL to open (None when neither the
binaries nor the matching ``DURABLE_AGENT_TEST_REDIS*_URL`` variable is there,
so the caller skips its Redis rows) and kills its servers on the way out. They
persist nothing, so a floor and a backend measured on them see the same server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

__all__ = ["redis_cluster", "redis_server"]


@contextmanager
def redis_server(folder: Path) -> Iterator[str | None]:
    """A private ``redis-server`` that saves nothing (``--save "" --appendonly no``); its URL.

    Without the binary on PATH: ``DURABLE_AGENT_TEST_REDIS_URL``, or None.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        yield os.environ.get("DURABLE_AGENT_TEST_REDIS_URL")
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def redis_cluster(folder: Path) -> Iterator[str | None]:
    """Three local cluster masters (no replicas), joined; their URL, or None."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        yield os.environ.get("DURABLE_AGENT_TEST_REDIS_CLUSTER_URL")
        return
    ports = []
    for _ in range(3):
        pair = []
        for _ in range(2):  # the client port and the cluster bus port
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                pair.append(sock.getsockname()[1])
        ports.append(pair)
    procs = []
    try:
        for port, bus in ports:
            where = folder / f"cluster-{port}"
            where.mkdir()
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            args += ["--appendonly", "no", "--dir", str(where), "--cluster-enabled", "yes"]
            args += ["--cluster-port", str(bus), "--cluster-config-file", "nodes.conf"]
            procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port, _ in ports:
            _wait_for(partial(_pongs, cli, port))
        nodes = [f"127.0.0.1:{port}" for port, _ in ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        for port, _ in ports:
            _wait_for(partial(_cluster_ok, cli, port))
        yield f"redis+cluster://127.0.0.1:{ports[0][0]}"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _cli(cli: str, port: int, *command: str) -> str:
    done = subprocess.run([cli, "-p", str(port), *command], capture_output=True, text=True)
    return done.stdout.strip()


def _pongs(cli: str, port: int) -> bool:
    return _cli(cli, port, "PING") == "PONG"


def _cluster_ok(cli: str, port: int) -> bool:
    return "cluster_state:ok" in _cli(cli, port, "CLUSTER", "INFO")


def _wait_for(ready: Callable[[], bool]) -> None:
    for _ in range(400):
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError("the local Redis Cluster did not come up within 20 s")
