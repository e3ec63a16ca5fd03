"""Many hosts on one machine: a private PostgreSQL on a bridge, and one namespace per host.

A *host* is a network namespace (``ip netns``) joined to a bridge by a veth
pair; a process started in it also gets a pid and a UTS namespace of its own
(``unshare --pid --fork --uts --mount-proc``) and its own host name. To the
lease logic it is another machine: its owner id names another host (the host
name plus the pid namespace), so no other worker can judge it by a process
table, and its pid is 1 like any container's. Cutting the host-side veth
(``ip link set … down``) partitions it: its packets are dropped, its TCP
connections stay open, and they carry on where they were when the link comes
back up.

The PostgreSQL is private to the test: ``initdb`` into a temporary folder (as
the ``postgres`` user: initdb refuses root), listening on loopback for the test
itself and on the bridge's address for the hosts. Every name (namespaces,
links, subnet, folder, port) is unique per test run, and `Network.close` and
`PrivatePostgres.stop` remove everything even after a failure.

`unavailable` says why this cannot run here (not root, a tool missing); the
test skips with it, or fails under CI (``CI=true``).
"""

from __future__ import annotations

import glob
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests._barriers import DEADLINE, wait_until

_TOOLS = ("ip", "unshare")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's binaries folder (Debian layout), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version, reverse=True)
    return Path(found[0]).parent if found else None


def _version(path: str) -> int:
    number = Path(path).parts[-3]
    return int(number) if number.isdigit() else 0


def unavailable() -> str | None:
    """Why the many-hosts test cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the many-hosts test needs root (ip netns, veth pairs, unshare)"
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"the many-hosts test needs {' and '.join(missing)} on PATH"
    if postgres_bin() is None:
        return "the many-hosts test needs PostgreSQL's initdb (/usr/lib/postgresql/*/bin)"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "the many-hosts test needs a 'postgres' user to run initdb as (it refuses root)"
    # Root without the capabilities (a container without CAP_SYS_ADMIN / NET_ADMIN).
    probe = subprocess.run(
        ["unshare", "--net", "--pid", "--uts", "--fork", "--mount-proc", "true"],
        capture_output=True, text=True, timeout=DEADLINE, check=False,
    )
    if probe.returncode != 0:
        return f"the many-hosts test cannot make namespaces here: {probe.stderr.strip()}"
    return None


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 under 10.0.0.0/8 that no address of this machine is in (others may run too)."""
    used = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    taken = {ipaddress.ip_interface(w).network for w in used.split() if "/" in w}
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.{random.randint(128, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet for the test's bridge")


class Host:
    """One host: a network namespace on the bridge, with a veth of its own."""

    def __init__(self, netns: str, link: str, address: str) -> None:
        self.netns = netns
        self.link = link
        """The host-side end of its veth pair, in the test's namespace (cut it to partition)."""
        self.address = address

    def prefix(self, hostname: str) -> list[str]:
        """The command prefix that runs a process on this host, named ``hostname``.

        ``--kill-child`` ends the process when ``unshare`` dies, so killing the
        child `subprocess.Popen` never leaves a worker behind.
        """
        return [
            "ip", "netns", "exec", self.netns,
            "unshare", "--pid", "--fork", "--uts", "--mount-proc", "--kill-child",
            "sh", "-c", 'hostname "$0" && exec "$@"', hostname,
        ]

    def cut(self) -> None:
        """Partition the host: its packets are dropped, its connections stay open."""
        _run("ip", "link", "set", self.link, "down")

    def restore(self) -> None:
        _run("ip", "link", "set", self.link, "up")


class Network:
    """A bridge in the test's namespace, and hosts on it (`add`); `close` removes all."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.subnet = _free_subnet()
        gateway = next(self.subnet.hosts())
        self.address = str(gateway)
        """The bridge's address, which the private PostgreSQL listens on."""
        self.bridge = f"fb{self.token}"
        self.hosts: list[Host] = []
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        try:
            _run("ip", "addr", "add", f"{gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def add(self) -> Host:
        """A new host on the bridge (names up to 15 characters: the kernel's limit)."""
        n = len(self.hosts)
        host = Host(f"fleetns-{self.token}-{n}", f"fh{self.token}{n}",
                    str(self.subnet.network_address + 10 + n))
        peer = f"fp{self.token}{n}"
        self.hosts.append(host)  # before creating anything: close() removes what exists
        _run("ip", "netns", "add", host.netns)
        _run("ip", "link", "add", host.link, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", host.netns)
        _run("ip", "link", "set", host.link, "master", self.bridge)
        _run("ip", "link", "set", host.link, "up")
        inside = ("ip", "-n", host.netns)
        _run(*inside, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", peer)
        _run(*inside, "link", "set", peer, "up")
        _run(*inside, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Remove the namespaces (their veth pairs go with them) and the bridge."""
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.link], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))  # free on every address, the bridge's too
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """A PostgreSQL of the test's own, in a temporary folder, on loopback and ``address``.

    ``clients`` is the subnet allowed in besides loopback.
    """

    def __init__(self, address: str, clients: str) -> None:
        bin_dir = postgres_bin()
        assert bin_dir is not None
        self.bin = bin_dir
        self.address = address
        self.clients = clients
        self.port = _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="fleetns-pg-"))
        shutil.chown(self.folder, "postgres", "postgres")
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, address: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{address}:{self.port}/postgres"

    def start(self) -> None:
        data = self.folder / "data"
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "-E", "UTF8", "--no-sync"],
            user="postgres", capture_output=True, check=True, timeout=2 * DEADLINE,
        )
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.clients} trust\n")
        log = open(self.folder / "server.log", "wb")  # noqa: SIM115 - closed with the child
        # fsync off: the test kills workers, never this server, and the machine is shared.
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", f"listen_addresses=127.0.0.1,{self.address}",
             "-c", f"unix_socket_directories={self.folder}", "-c", "fsync=off",
             "-c", "max_connections=200"],
            user="postgres", stdout=log, stderr=log,
        )
        log.close()
        wait_until(self._ready, awaiting="the private PostgreSQL to accept connections",
                   processes=[self.proc])

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        """Stop the server (fast shutdown, then a kill) and remove its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def sessions(self) -> str:
        """The server's sessions and what they hold: for a failure message."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT a.client_addr, a.state, now() - a.xact_start, left(a.query, 80),"
                " (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid AND l.granted)"
                " FROM pg_stat_activity a WHERE a.backend_type = 'client backend'"
                " ORDER BY a.client_addr"
            ).fetchall()
        return "\n".join(" | ".join(str(c) for c in row) for row in rows)

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""
