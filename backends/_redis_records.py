"""How `RedisBackend` keeps a header in a Redis hash: one field per header field.

Times are ``"<seconds>.<microseconds>"`` decimal strings, exact both ways (a
float would lose the last microsecond of some datetimes); the creation time
doubles as the score of the index entries.

The scripts' replies are read here too: `status` raises what a failed one
means, `renewed` and `extended` give the lease a successful one extended.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from durable_agent.backend import ClaimedRun
from durable_agent.errors import ConfigurationError, CorruptRunError, RunNotFoundError
from durable_agent.records import Lease, RunHeader, decode_header_fields

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    """An aware datetime as exact ``seconds.micros`` text (a ZSET score and a hash field)."""
    if moment.tzinfo is None:
        raise ConfigurationError(
            f"{moment.isoformat()} has no time zone; use an aware datetime such as "
            "durable_agent.records.utcnow()"
        )
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def unstamp(text: str) -> datetime | str:
    """Inverse of `stamp`; text that is not a time is returned for validation to reject."""
    seconds, _, micros = text.partition(".")
    try:
        return _EPOCH + timedelta(seconds=int(seconds), microseconds=int(micros.ljust(6, "0")))
    except (ValueError, OverflowError):
        return text  # left for validation to reject, naming the run


def header_fields(header: RunHeader) -> list[str]:
    """The header as HSET arguments: field, value, field, value, ..."""
    fields: dict[str, str] = {
        "run_id": header.run_id,
        "agent_name": header.agent_name,
        "state": header.state.value,
        "seq": str(header.seq),
        "created_at": stamp(header.created_at),
        "updated_at": stamp(header.updated_at),
        "lease_generation": str(header.lease_generation),
        "schema_version": str(header.schema_version),
    }
    if header.session_id is not None:
        fields["session_id"] = header.session_id
    if header.user_id is not None:
        fields["user_id"] = header.user_id
    if header.cancel_requested is not None:
        fields["cancel_requested"] = header.cancel_requested
    if header.lease is not None:
        fields.update(lease_fields(header.lease))
    # Left out at their defaults, so a header written before workers existed
    # and one submitted to the default queue look the same.
    if header.queue != "default":
        fields["queue"] = header.queue
    if header.priority:
        fields["priority"] = str(header.priority)
    if header.not_before is not None:
        fields["not_before"] = stamp(header.not_before)
    return [part for pair in fields.items() for part in pair]


def header_from_hash(run_id: str, raw: Any) -> RunHeader:
    """A header from HGETALL (a dict, or the flat list a script returns)."""
    if isinstance(raw, list):  # HGETALL inside a script comes back flat
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    try:
        f = {text(k): text(v) for k, v in raw.items()}
    except UnicodeDecodeError as exc:
        raise CorruptRunError(run_id, None, f"a header field is not UTF-8 ({exc})") from exc
    version: object = f.get("schema_version")
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    lease = None
    if "lease_owner" in f:
        lease = {
            "owner": f["lease_owner"],
            "host": f.get("lease_host"),
            "pid": f.get("lease_pid"),
            "generation": f.get("lease_generation"),
            "expires_at": f.get("lease_expires"),
            "ttl": f.get("lease_ttl"),
            "cancel_requested": f.get("cancel_requested"),
        }
    return decode_header_fields(
        run_id,
        {
            "schema_version": version,
            "run_id": f.get("run_id"),
            "session_id": f.get("session_id"),
            "user_id": f.get("user_id"),
            "agent_name": f.get("agent_name"),
            "state": f.get("state"),
            "seq": f.get("seq"),
            "created_at": unstamp(f.get("created_at", "")),
            "updated_at": unstamp(f.get("updated_at", "")),
            "lease": lease,
            "lease_generation": f.get("lease_generation"),
            "cancel_requested": f.get("cancel_requested"),
            "queue": f.get("queue", "default"),
            "priority": f.get("priority", "0"),
            "not_before": unstamp(f["not_before"]) if "not_before" in f else None,
        },
    )


def lease_fields(lease: Lease) -> dict[str, str]:
    return {
        "lease_owner": lease.owner,
        "lease_host": lease.host,
        "lease_pid": str(lease.pid),
        "lease_expires": repr(float(lease.expires_at)),
        "lease_ttl": repr(float(lease.ttl)),
    }


def lease_args(lease: Lease) -> list[str]:
    return [lease.owner, lease.host, str(lease.pid), repr(float(lease.ttl))]


def text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def optional(value: object) -> str | None:
    return None if value is None or value is False else text(value)


def status(run_id: str, reply: Any) -> str:
    """A script reply's status; raises for a run that is missing or damaged."""
    found = text(reply[0])
    if found == "missing":
        raise RunNotFoundError(run_id)
    if found == "wrongtype":
        which, kind = text(reply[1]), text(reply[2])
        raise CorruptRunError(
            run_id, None, f"its Redis {which} key holds a {kind}, not the expected type"
        )
    if found == "corrupt":
        detail = " ".join(text(part) for part in reply[1:])
        raise CorruptRunError(run_id, None, f"the stored header does not match ({detail})")
    return found


def renewed(lease: Lease, reply: bytes) -> Lease:
    """The lease from the append script's one-string reply: ok, expires[, cancel]."""
    parts = reply.decode().split("\x1f", 2)
    # `Lease.renewed`, not ``model_copy(update=...)``: a third of the cost, once per append.
    return lease.renewed(float(parts[1]), parts[2] if len(parts) > 2 else None)


def extended(lease: Lease, reply: Any) -> Lease:
    """The lease from a reply of status, expires, cancel requested (or nil)."""
    return lease.renewed(float(text(reply[1])), optional(reply[2]))


def claimed(run_id: str, reply: Sequence[Any], ttl: float) -> ClaimedRun:
    """A granted claim from a claim script's reply.

    Fields 1 to 6 are the lease taken over (owner, host, pid, expires, ttl,
    generation; the owner empty when none was held), field 7 the new header's hash.
    """
    header = header_from_hash(run_id, reply[7])
    previous = None
    if reply[1]:
        previous = Lease(
            owner=text(reply[1]),
            host=text(reply[2]) if reply[2] else "",
            pid=int(text(reply[3])) if reply[3] else 0,
            generation=int(text(reply[6])),
            expires_at=float(text(reply[4])) if reply[4] else 0.0,
            ttl=float(text(reply[5])) if reply[5] else float(ttl),
            cancel_requested=header.cancel_requested,
        )
    return ClaimedRun(header=header, previous=previous)
