"""No secret reaches the store, the raised exception or its traceback, on any backend.

Every secret here carries a random hex token, and the scans look for the token
alone: hex digits survive every escaping (repr, JSON, percent-encoding, bytes
repr), so a secret stored in any form would still be found.
"""

from __future__ import annotations

import base64
import json
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from durable_agent import (
    Agent,
    ConfigurationError,
    RedactedError,
    RetryPolicy,
    RunFailedError,
    RunState,
    ToolCall,
    mark_secret,
)
from durable_agent.backend import Backend
from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.backends.memory import MemoryBackend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.testing import Fault
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)
from tests.providers.conftest import Provider, run

TWO = RetryPolicy(attempts=2, initial_delay=0.001, max_delay=0.01)


def token() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Store:
    """A fresh backend and a way to read every byte it stored."""

    backend: Backend
    dump: Callable[[], bytes]
    files_survive_close: bool


def _redis_bytes(url: str, prefix: str) -> bytes:
    import redis

    client = redis.Redis.from_url(url)
    out: list[bytes] = []
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        assert keys, "the scan reads the store's keys"
        for key in keys:
            out.append(key)
            dumped = client.dump(key)
            if isinstance(dumped, bytes):
                out.append(dumped)
            # DUMP may compress a value: read it by its type too.
            kind = client.type(key).decode()
            if kind == "string":
                out.append(client.get(key) or b"")
            elif kind == "hash":
                out.extend(b for pair in client.hgetall(key).items() for b in pair)
            elif kind == "list":
                out.extend(client.lrange(key, 0, -1))
            elif kind == "set":
                out.extend(client.smembers(key))
            elif kind == "zset":
                out.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
            elif kind == "stream":
                for entry_id, fields in client.xrange(key):
                    out.append(entry_id)
                    out.extend(b for pair in fields.items() for b in pair)
            else:
                raise AssertionError(f"unexpected Redis type {kind!r} at {key!r}")
    finally:
        client.close()
    return b"\n".join(out)


@pytest.fixture(params=["sqlite", "jsonfile", "redis", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    if kind == "sqlite":
        backend: Backend = SqliteBackend(tmp_path / "runs.db")
        # The database, its WAL and shared-memory files: read while open, before
        # a checkpoint folds the WAL in, and again after close.
        yield Store(
            backend,
            lambda: b"".join(
                p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.name.startswith("runs.db")
            ),
            True,
        )
    elif kind == "jsonfile":
        folder = tmp_path / "runs"
        backend = JsonFileBackend(folder)
        yield Store(
            backend,
            lambda: b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()),
            True,
        )
    elif kind == "redis":
        from durable_agent.backends.redis import RedisBackend

        url = request.getfixturevalue("redis_url")
        prefix = f"t-{token()}:"
        yield Store(RedisBackend(url, prefix=prefix), lambda: _redis_bytes(url, prefix), False)
    else:
        memory = MemoryBackend()

        def held() -> bytes:
            # The memory store keeps each record as the JSON text a durable
            # store would write; these texts are all it holds.
            texts = [s.header + "".join(s.events) for s in memory._runs.values()]
            return "".join(texts).encode()

        yield Store(memory, held, False)


def assert_secret_free(error: BaseException, *tokens: str, scans: list[bytes]) -> None:
    """No token in any scan of the store, nor anywhere the raised error can be printed."""
    assert scans, "the store was scanned"
    for scan in scans:
        assert b"[redacted]" in scan, "the scan reads the redacted record"
        for secret in tokens:
            assert secret.encode() not in scan
    shown = [str(error), repr(error), "".join(traceback.format_exception(error))]
    link: BaseException | None = error
    seen: set[int] = set()
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        shown += [str(link), repr(link), *getattr(link, "__notes__", ())]
        if link.__context__ is not None and link.__context__ is not link.__cause__:
            shown += [str(link.__context__), repr(link.__context__)]
        link = link.__cause__ or link.__context__
    for text in shown:
        for secret in tokens:
            assert secret not in text


async def fail_run(store: Store, agent: Agent) -> tuple[RunFailedError, list[bytes]]:
    """Run ``agent`` until it fails; scan the store while it is open and after close."""
    scans: list[bytes] = []
    try:
        with pytest.raises(RunFailedError) as raised:
            await agent.do_async("go")
        scans.append(store.dump())
    finally:
        await store.backend.close()
    if store.files_survive_close:
        scans.append(store.dump())
    return raised.value, scans


def test_an_echoed_key_and_custom_header_are_never_stored_or_shown(
    provider: Provider, store: Store
) -> None:
    key, custom = f"sk-test-{token()}-key", f"team-{token()}-auth"
    with provider.server(
        [Fault.echo_headers(500), Fault.echo_headers(400)]
    ).running_in_thread() as server:
        model = provider.model(
            server, api_key=key, headers={"x-team-auth": custom, "x-shard": "1"}
        )

        async def go() -> tuple[RunFailedError, list[bytes]]:
            return await fail_run(store, Agent(model, db=store.backend, retry=TWO))

        error, scans = run(go())
        assert len(server.requests) == 2
    assert_secret_free(error, key[8:24], custom[5:21], scans=scans)
    # Short header values are left alone: "1" is not blanked out of the text.
    assert b"x-shard" in scans[0]
    assert b'\\"x-shard\\": \\"1\\"' in scans[0] or b'"x-shard": "1"' in scans[0]


def test_a_tool_exception_quoting_secrets_in_any_form_is_redacted(
    provider: Provider, store: Store
) -> None:
    key = f"sk-test-{token()}-key"
    marked_token = token()
    marked = f"pä$$ wörd/{marked_token}\"'+\n"
    assert mark_secret(marked)
    core = marked.strip()

    async def leak() -> str:
        """Leak every form of the secrets."""
        forms = [
            repr(key),
            str(key.encode()),
            repr(key.encode()),
            f"Bearer {key}",
            repr(core),
            ascii(core),
            json.dumps(core),
            json.dumps(json.dumps(core)),
            urllib.parse.quote(core, safe=""),
            urllib.parse.quote_plus(core),
            repr(core.encode()),
            repr(marked),
        ]
        error = RuntimeError(" | ".join(forms))
        error.add_note(f"note: {urllib.parse.quote(core, safe='').lower()}")
        raise error from ValueError(key.encode())

    with provider.server([ToolCall("leak", {})]).running_in_thread() as server:
        model = provider.model(server, api_key=key)

        async def go() -> tuple[RunFailedError, list[bytes]]:
            return await fail_run(store, Agent(model, db=store.backend, tools=[leak], retry=TWO))

        error, scans = run(go())
    assert error.failed_state == RunState.TOOL_EXEC.value
    assert_secret_free(error, key[8:24], marked_token, scans=scans)
    stand_in = error.__cause__
    assert isinstance(stand_in, RedactedError), "the leaking tool error is replaced"
    assert stand_in.original_type == "builtins.RuntimeError"
    assert "note: [redacted]" in stand_in.__notes__
    assert "leak" in "".join(traceback.format_tb(stand_in.__traceback__)), "its traceback is kept"
    assert isinstance(stand_in.__cause__, RedactedError)
    assert stand_in.__cause__.original_type == "builtins.ValueError"


def test_a_header_value_the_http_client_refuses_is_never_stored_or_shown(
    provider: Provider, store: Store
) -> None:
    custom = f"team-{token()}-auth"
    with provider.server(["never"]).running_in_thread() as server:
        model = provider.model(server, headers={"x-team-auth": custom + "\n"})

        async def go() -> tuple[RunFailedError, list[bytes]]:
            return await fail_run(store, Agent(model, db=store.backend, retry=TWO))

        error, scans = run(go())
        assert not server.requests, "the client refused the header before sending"
    assert_secret_free(error, custom[5:21], scans=scans)
    assert "header" in str(error).lower()


@pytest.mark.parametrize("source", ["argument", "environment"])
@pytest.mark.parametrize("padding", ["\n", "\r\n", "  \t", "\n\n "])
def test_a_key_with_surrounding_whitespace_is_stripped_and_works(
    provider: Provider, monkeypatch: pytest.MonkeyPatch, source: str, padding: str
) -> None:
    key = f"sk-test-{token()}-key"
    with provider.server(["ok"], api_key=key).running_in_thread() as server:
        if source == "environment":
            monkeypatch.setenv(provider.key_env, key + padding)
            model = provider.model(server, api_key=None)
        else:
            model = provider.model(server, api_key=padding + key + padding)
        assert Agent(model, db="memory://").do("hi") == "ok"


_BAD = ["\n", "\x00", "\x1b", " ", "\u00a0", "\u200b", "\x7f"]


@pytest.mark.parametrize(
    ("source", "bad"),
    [("argument", b) for b in _BAD]
    + [("environment", b) for b in _BAD if b != "\x00"],  # no NUL in an environment
)
def test_a_key_with_an_inner_control_character_is_refused_without_showing_it(
    provider: Provider, monkeypatch: pytest.MonkeyPatch, source: str, bad: str
) -> None:
    secret = token()
    key = f"sk-{secret}{bad}tail-{secret[::-1]}"
    with provider.server([]).running_in_thread() as server:
        if source == "environment":
            monkeypatch.setenv(provider.key_env, key)
            options: dict[str, Any] = {"api_key": None}
        else:
            options = {"api_key": key}
        with pytest.raises(ConfigurationError) as raised:
            provider.model(server, **options)
    message = str(raised.value)
    assert provider.key_env in message if source == "environment" else "api_key=" in message
    assert f"position {len('sk-') + len(secret) + 1} of {len(key)}" in message
    assert f"U+{ord(bad):04X}" in message or "a space" in message
    printed = "".join(traceback.format_exception(raised.value))
    for part in (secret, secret[::-1], "tail-"):
        assert part not in printed


def test_a_model_call_that_fails_raises_a_chain_without_the_secret(provider: Provider) -> None:
    """The adapter cleans its own chain: ``model.request`` is public too."""
    from durable_agent import ModelConnectionError
    from durable_agent.records import UserMessage

    custom = f"team-{token()}-auth"
    with provider.server(["never"]).running_in_thread() as server:
        model = provider.model(server, headers={"x-team-auth": custom + "\n"})
        with pytest.raises(ModelConnectionError) as raised:
            run(model.request([UserMessage(content="hi")], tools=[]))
    printed = "".join(traceback.format_exception(raised.value))
    assert "[redacted]" in printed
    assert custom[5:21] not in printed
    assert type(raised.value.__cause__).__module__.startswith(provider.name), "SDK error kept"


def test_a_ready_clients_key_and_headers_are_never_stored_or_shown(
    provider: Provider, store: Store
) -> None:
    sdk = pytest.importorskip(provider.name)
    key, custom = f"sk-test-{token()}-key", f"team-{token()}-auth"
    with provider.server([Fault.echo_headers(400)]).running_in_thread() as server:
        cls = sdk.AsyncOpenAI if provider.name == "openai" else sdk.AsyncAnthropic
        client = cls(api_key=key, base_url=server.base_url, default_headers={"x-team": custom})
        model = provider.model(server, client=client, api_key=None, base_url=None)

        async def go() -> tuple[RunFailedError, list[bytes]]:
            try:
                return await fail_run(store, Agent(model, db=store.backend, retry=TWO))
            finally:
                await client.close()

        error, scans = run(go())
    assert_secret_free(error, key[8:24], custom[5:21], scans=scans)


def test_a_password_in_the_base_url_is_never_stored_or_shown(
    provider: Provider, store: Store
) -> None:
    password = f"pw-{token()}-word"
    with provider.server([Fault.echo_headers(400)]).running_in_thread() as server:
        url = server.base_url.replace("http://", f"http://user:{password}@")
        model = provider.model(server, base_url=url)

        async def go() -> tuple[RunFailedError, list[bytes]]:
            return await fail_run(store, Agent(model, db=store.backend, retry=TWO))

        error, scans = run(go())
    # httpx sends the URL's user and password as a Basic credential, which the
    # server echoes: base64, so its own token is looked for too.
    basic = base64.b64encode(f"user:{password}".encode()).decode()
    assert_secret_free(error, password[3:19], basic[4:20], scans=scans)
