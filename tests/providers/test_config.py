"""Building the models: keys, environment variables, lazy SDK imports, and secrets kept out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from durable_agent import (
    Agent,
    ConfigurationError,
    ModelNotAvailableError,
    RunFailedError,
    ToolCall,
)
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.models import resolve_model
from durable_agent.models._http import retry_after_seconds
from durable_agent.models.anthropic import AnthropicModel
from durable_agent.models.openai import OpenAIModel
from durable_agent.testing import Fault
from tests.providers.conftest import API_KEY, FAST, Ledger, Provider, run

ROOT = Path(__file__).resolve().parents[2]


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_a_missing_key_fails_at_construction_saying_how_to_set_it(provider: Provider) -> None:
    with pytest.raises(ConfigurationError, match=provider.key_env) as raised:
        resolve_model(provider.model_string)
    assert "api_key=" in str(raised.value)
    with pytest.raises(ConfigurationError, match=provider.key_env):
        Agent(provider.model_string, db="memory://")


def test_the_key_and_base_url_come_from_the_environment(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    with provider.server(["ok"], api_key=API_KEY).running_in_thread() as server:
        monkeypatch.setenv(provider.key_env, API_KEY)
        monkeypatch.setenv(provider.url_env, server.base_url)
        model = resolve_model(provider.model_string)
        assert model.name == provider.model_string
        from durable_agent.records import UserMessage

        response = run(model.request([UserMessage(content="hi")], tools=[]))
    assert response.message.content == "ok"


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), "10"])
def test_a_bad_timeout_is_refused(provider: Provider, timeout: object) -> None:
    cls = OpenAIModel if provider.name == "openai" else AnthropicModel
    with pytest.raises(ConfigurationError, match="timeout"):
        cls(provider.model_name, api_key="k", timeout=timeout)  # type: ignore[arg-type]


def test_import_durable_agent_imports_no_sdk() -> None:
    done = python(
        "import sys, durable_agent, durable_agent.testing; "
        "print(sorted(m for m in ('openai', 'anthropic', 'httpx2') if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("package", "prefix"), [("openai", "openai"), ("anthropic", "anthropic")])
def test_a_missing_sdk_names_the_install_command(package: str, prefix: str) -> None:
    done = python(
        f"import sys; sys.modules[{package!r}] = None\n"
        "from durable_agent import Agent, ModelNotAvailableError\n"
        "try:\n"
        f"    Agent({prefix + '/some-model'!r}, db='memory://')\n"
        "except ModelNotAvailableError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert f'pip install "durable-agent[{package}]"' in done.stdout
    assert ModelNotAvailableError.__name__ in done.stdout


def test_retry_after_headers_are_parsed_in_every_form() -> None:
    now = 1_000_000_000.0
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "Sun, 09 Sep 2001 01:46:43 GMT"}, now=now) == 3.0
    assert retry_after_seconds({"retry-after": "Sun, 09 Sep 2001 01:46:00 GMT"}, now=now) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_the_api_key_appears_nowhere_in_the_sqlite_store(
    provider: Provider, tmp_path: Path
) -> None:
    path = tmp_path / "runs.db"
    ledger = Ledger()
    leaky = Fault.http(500, f"upstream said: bad key {API_KEY}")
    items = [ToolCall("lookup", {"city": "Oslo"}), leaky, Fault.drop_connection(), "done"]
    with provider.server(items, api_key=API_KEY).running_in_thread() as server:

        async def go() -> None:
            backend = SqliteBackend(path)
            try:
                agent = Agent(provider.model(server), db=backend, tools=ledger.tools(), retry=FAST)
                await agent.do_async("weather?")
                # A rejected key is recorded too, and must not carry the key either.
                wrong = Agent(provider.model(server, api_key=API_KEY[::-1]), db=backend)
                with pytest.raises(RunFailedError):
                    await wrong.do_async("again?")
            finally:
                await backend.close()

        run(go())
    files = [p for p in tmp_path.iterdir() if p.name.startswith("runs.db")]
    assert files
    stored = b"".join(p.read_bytes() for p in files)
    assert b"sunny in Oslo" in stored, "the scan reads the real data"
    for secret in (API_KEY, API_KEY[::-1]):
        assert secret.encode() not in stored
        assert secret[-12:].encode() not in stored


@pytest.mark.parametrize("max_tokens", [0, -5, 1.5, True])
def test_a_bad_max_tokens_is_refused(provider: Provider, max_tokens: object) -> None:
    cls = OpenAIModel if provider.name == "openai" else AnthropicModel
    with pytest.raises(ConfigurationError, match="max_tokens"):
        cls(provider.model_name, api_key="k", max_tokens=max_tokens)  # type: ignore[arg-type]


def test_error_messages_never_show_credentials_in_a_base_url(provider: Provider) -> None:
    from durable_agent.errors import ModelConnectionError
    from durable_agent.records import UserMessage

    with provider.server([]).running_in_thread() as server:
        url = server.base_url.replace("http://", "http://user:hunter2@")
    model = provider.model(server, base_url=url)
    with pytest.raises(ModelConnectionError) as raised:
        run(model.request([UserMessage(content="hi")], tools=[]))
    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)
