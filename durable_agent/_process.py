"""Which host this is, and whether a process on it is alive.

A lease's host is the host name plus, on Linux, the pid namespace: two
containers may share a host name while their pids mean different processes,
and only a pid this process can see may be judged alive or dead. No imports of
the library, so the lowest layer (errors) can describe a lease holder too.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["describe_owner", "host_id", "process_alive"]


def host_id() -> str:
    """This host as leases name it: the host name plus ``~pidns<inode>`` on Linux."""
    try:
        namespace = f"~pidns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux, or /proc not mounted: the host name alone
        namespace = ""
    return socket.gethostname() + namespace


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name; Z is a zombie:
    # killed and not yet reaped, so it will never write again.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def describe_owner(owner: str) -> str:
    """A lease owner id (``host:pid:nonce``) in words: the process, its host, whether alive.

    Liveness is only known for a process of this host (and pid namespace);
    for another host the lease's expiry is what decides.
    """
    host, sep, rest = owner.rpartition(":")[0].rpartition(":")
    pid_text = rest if sep else ""
    if not sep or not pid_text.isdigit():
        return repr(owner)  # not an id this library made: show it as it is
    name = host.split("~pidns", 1)[0] or "?"
    if host == host_id():
        pid = int(pid_text)
        if pid == os.getpid():
            return f"this process ({pid} on {name})"
        state = "alive" if process_alive(pid) else "gone"
        return f"process {pid} on this host ({name}, {state})"
    where = "another container on host" if name == socket.gethostname() else "host"
    return f"process {pid_text} on {where} {name} (liveness not visible from here)"
