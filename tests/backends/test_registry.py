"""Store URLs → backends: every built-in scheme, typed options, plug-ins, and bad URLs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from durable_agent import Agent, ScriptedModel, open_backend
from durable_agent import registry as registry_module
from durable_agent.backend import Backend
from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.backends.memory import MemoryBackend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.errors import ConfigurationError
from durable_agent.registry import known_schemes, register_backend
from tests.backends.conftest import run


class UrlBackend(MemoryBackend):
    """A third-party backend built from its URL: ``kv://anything?shards=3``."""

    def __init__(
        self,
        url: str,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        shards: int = 1,
        ratio: float | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__(session_id=session_id, user_id=user_id)
        self.url, self.shards, self.ratio, self.strict = url, shards, ratio, strict


class FromUrlBackend(MemoryBackend):
    @classmethod
    def from_url(
        cls, url: str, *, session_id: str | None = None, user_id: str | None = None
    ) -> FromUrlBackend:
        store = cls(session_id=session_id, user_id=user_id)
        store.url = url  # type: ignore[attr-defined]
        return store


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTERED", {})
    monkeypatch.setattr(registry_module, "_PLUGINS", None)


def _close(store: Backend) -> None:
    run(store.close())


# -- built-in schemes -----------------------------------------------------------------------------


def test_memory_url_opens_a_memory_backend_with_the_tags() -> None:
    store = open_backend("memory://", session_id="s", user_id="u")
    assert isinstance(store, MemoryBackend)
    assert (store.session_id, store.user_id) == ("s", "u")
    _close(store)


def test_sqlite_urls_are_relative_with_three_slashes_and_absolute_with_four(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_backend("sqlite:///runs.db")
    absolute = open_backend(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(relative, SqliteBackend)
    assert isinstance(absolute, SqliteBackend)
    assert relative._path == str(tmp_path / "runs.db")
    assert absolute._path == str(tmp_path / "abs.db")
    spaced = open_backend("sqlite:///my%20runs.db")
    assert isinstance(spaced, SqliteBackend)
    assert spaced._path == str(tmp_path / "my runs.db")
    for store in (relative, absolute, spaced):
        _close(store)


def test_url_options_are_converted_to_the_types_the_backend_declares(tmp_path: Path) -> None:
    store = open_backend(f"sqlite:///{tmp_path}/runs.db?busy_timeout=10&synchronous=normal")
    assert isinstance(store, SqliteBackend)
    assert store._busy_timeout == 10.0
    assert isinstance(store._busy_timeout, float)
    assert store._synchronous == "NORMAL"
    batched = open_backend(f"sqlite:///{tmp_path}/runs.db?max_batch=7")
    assert isinstance(batched, SqliteBackend)
    assert batched._max_batch == 7
    _close(store)
    _close(batched)


def test_file_urls_open_a_json_file_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = open_backend(f"file://{tmp_path}/runs")
    relative = open_backend("file:relative/runs")
    local = open_backend(f"file://localhost{tmp_path}/x")
    assert isinstance(absolute, JsonFileBackend)
    assert isinstance(relative, JsonFileBackend)
    assert isinstance(local, JsonFileBackend)
    assert absolute.folder == str(tmp_path / "runs")
    assert relative.folder == str(tmp_path / "relative" / "runs")
    assert local.folder == str(tmp_path / "x")
    for store in (absolute, relative, local):
        _close(store)


def test_agent_accepts_a_store_url(tmp_path: Path) -> None:
    agent = Agent(ScriptedModel(["hello"]), db=f"file://{tmp_path}/runs")
    assert isinstance(agent.db, JsonFileBackend)
    assert agent.do("say hello") == "hello"
    assert len(run(agent.db.list_runs()).runs) == 1
    _close(agent.db)


# -- third-party schemes ---------------------------------------------------------------------------


def test_register_backend_adds_a_scheme_with_typed_options() -> None:
    register_backend("kv", f"{__name__}:UrlBackend")
    assert "kv" in known_schemes()
    store = open_backend("kv://host/path?shards=3&ratio=0.5&strict=yes&driver=x", user_id="u")
    assert isinstance(store, UrlBackend)
    assert (store.shards, store.ratio, store.strict, store.user_id) == (3, 0.5, True, "u")
    assert store.url == "kv://host/path?driver=x"  # options it does not take stay in the URL
    _close(store)
    with pytest.raises(ConfigurationError, match=r"shards='many' of UrlBackend must be int"):
        open_backend("kv://host?shards=many")


def test_a_class_with_from_url_builds_itself() -> None:
    register_backend("Mine", f"{__name__}:FromUrlBackend")
    store = open_backend("mine://x?y=1", session_id="s")
    assert isinstance(store, FromUrlBackend)
    assert store.url == "mine://x?y=1"  # type: ignore[attr-defined]
    assert store.session_id == "s"
    _close(store)


def test_register_backend_refuses_silent_overrides() -> None:
    register_backend("kv", f"{__name__}:UrlBackend")
    register_backend("kv", f"{__name__}:UrlBackend")  # the same again is fine
    with pytest.raises(ConfigurationError, match=r"already opens.*replace=True"):
        register_backend("kv", f"{__name__}:FromUrlBackend")
    register_backend("kv", f"{__name__}:FromUrlBackend", replace=True)
    with pytest.raises(ConfigurationError, match="built in"):
        register_backend("sqlite", f"{__name__}:UrlBackend", replace=True)
    with pytest.raises(ConfigurationError, match="scheme"):
        register_backend("no spaces", f"{__name__}:UrlBackend")
    with pytest.raises(ConfigurationError, match="module:Class"):
        register_backend("ok", "not a target")


def _plugin(tmp_path: Path, name: str, lines: str) -> None:
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[durable_agent.backends]\n{lines}\n")


def test_entry_points_add_schemes_and_two_claims_of_one_scheme_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugin(tmp_path, "kvplugin", f"kv = {__name__}:UrlBackend\nclash = {__name__}:UrlBackend")
    _plugin(tmp_path, "otherplugin", f"clash = {__name__}:FromUrlBackend")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"kv", "clash"} <= set(known_schemes())
    store = open_backend("kv://somewhere?shards=2")
    assert isinstance(store, UrlBackend)
    assert store.shards == 2
    _close(store)
    with pytest.raises(ConfigurationError, match="claimed by several entry points"):
        open_backend("clash://x")
    with pytest.raises(ConfigurationError, match="already opens"):
        register_backend("kv", f"{__name__}:FromUrlBackend")


def test_a_missing_driver_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "durable_agent.backends.redis", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'durable-agent\[redis\]'"):
        open_backend("redis://localhost:6379/0")


def test_a_target_that_is_not_a_backend_is_refused() -> None:
    register_backend("notone", "pathlib:Path")
    with pytest.raises(ConfigurationError, match="not a Backend subclass"):
        open_backend("notone://x")


# -- bad URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mongodb://db/x", r"unknown store scheme 'mongodb'.*known schemes: file, memory"),
        ("runs.db", "not a store URL"),
        ("", "not a store URL"),
        ("redis://:pw@host:notaport/0", r"malformed store URL 'redis://:\*\*\*@host"),
        ("redis://", "names no Redis host"),
        ("sqlite://runs.db", "three slashes"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///runs.db?busy_timeout=soon", "busy_timeout='soon'.*must be float"),
        ("sqlite:///runs.db?colour=blue", "takes no option 'colour'; it takes busy_timeout"),
        ("sqlite:///runs.db?synchronous=SOMETIMES", "synchronous='SOMETIMES'.*one of 'OFF'"),
        ("memory://somewhere", "takes no host or path"),
        ("file://otherhost/runs", "host other than localhost"),
        ("file:///", "names no folder"),
        ("redis://localhost/0?retention=forever", "retention='forever'"),
    ],
)
def test_bad_urls_raise_configuration_error_naming_the_problem(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        open_backend(url)


def test_a_url_that_is_not_a_string_is_refused() -> None:
    bad: Any = 42
    with pytest.raises(ConfigurationError, match="must be a str"):
        open_backend(bad)
