"""Load a Redis key dump (``tests/data/make_v1_stores.py`` writes one) into a server."""

from __future__ import annotations

import json
from pathlib import Path

import redis


def load_dump(url: str, dump: Path) -> int:
    """Write every key of ``dump`` into the server at ``url``; return how many."""
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = json.loads(dump.read_text())
    try:
        for entry in keys:
            key, kind, value = entry["key"], entry["type"], entry["value"]
            if kind == "hash":
                client.hset(key, mapping=value)
            elif kind == "list":
                client.rpush(key, *value)
            elif kind == "zset":
                client.zadd(key, {member: score for member, score in value})
            elif kind == "set":
                client.sadd(key, *value)
            elif kind == "string":
                client.set(key, value)
            elif kind == "stream":
                for entry_id, fields in value:
                    client.xadd(key, fields, id=entry_id)
            else:
                raise AssertionError(f"unknown key type {kind} in {dump}")
            if entry["pttl"] > 0:
                client.pexpire(key, entry["pttl"])
    finally:
        client.close()
    return len(keys)
