"""What a crash test runs: the user's agent, found by name, checked, and its tools inspected.

The agent runs in new processes, so it must be importable: `spec_of` turns an
`Agent` object (or a factory) into ``module:attribute``, and `load_agent`
imports one in any process (``module:attribute`` or ``path/to/file.py:attribute``).
`check_model` refuses a real provider endpoint unless asked, since every kill
point calls the model again. `pure_by_inspection` says whether a tool's body
calls nothing at all, so it cannot have outside effects.
"""

from __future__ import annotations

import dis
import hashlib
import importlib
import importlib.util
import ipaddress
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from durable_agent.agent import Agent
from durable_agent.errors import ConfigurationError
from durable_agent.models.scripted import ScriptedModel
from durable_agent.tools import Tool

__all__ = ["check_model", "load_agent", "pure_by_inspection", "spec_of"]

_HTTP_MODELS: Final = {
    "durable_agent.models.openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "durable_agent.models.anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
}
"""The built-in provider models: the environment variable and default of their base URL."""

_NOT_PURE: Final = ("CALL", "PRECALL", "IMPORT_", "STORE_GLOBAL", "DELETE_GLOBAL", "STORE_ATTR",
                    "DELETE_ATTR", "STORE_SUBSCR", "DELETE_SUBSCR", "GET_AWAITABLE", "SEND",
                    "YIELD_", "BEFORE_", "LOAD_BUILD_CLASS", "SETUP_WITH", "ASYNC_GEN")
"""Opcode name prefixes through which a function could reach anything outside itself."""


def spec_of(agent: Agent | str | Callable[[], Agent]) -> str:
    """``module:attribute`` for an agent (or a factory) that a new process can import.

    An `Agent` object is looked up among the loaded modules' globals; one
    found only in ``__main__`` (a script) is named by the script's path.
    """
    if isinstance(agent, str):
        if ":" not in agent:
            raise ConfigurationError(
                f"crashtest agent {agent!r}: write module:attribute, e.g. myapp.agents:support"
            )
        return agent
    if not isinstance(agent, Agent):
        module, name = getattr(agent, "__module__", None), getattr(agent, "__qualname__", "")
        if callable(agent) and module and name and "<" not in name:
            return _named(module, name)
        raise ConfigurationError(
            f"crashtest takes an Agent, a function returning one, or 'module:attribute'; "
            f"got {agent!r} (a function defined inside another cannot be imported)"
        )
    found: list[tuple[str, str]] = []
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        found += [(module_name, k) for k, v in list(namespace.items()) if v is agent]
    # An importable module first, and one that is not a test module (pytest may import
    # those in a way a new process cannot repeat) before one that is.
    found.sort(key=lambda place: (place[0] == "__main__", _looks_like_a_test(place[0])))
    if not found:
        raise ConfigurationError(
            "crashtest runs the agent in new processes, which import it: define it at the top "
            "level of an importable module, or pass 'module:attribute' or a function that "
            "builds it"
        )
    return _named(*found[0])


def _looks_like_a_test(module_name: str) -> bool:
    last = module_name.rsplit(".", 1)[-1]
    return last.startswith("test_") or last.endswith("_test") or last == "conftest"


def _named(module_name: str, attribute: str) -> str:
    if module_name == "__main__":
        script = getattr(sys.modules["__main__"], "__file__", None)
        if script is None:
            raise ConfigurationError(
                "crashtest cannot import an agent defined in an interactive session: put it in "
                "a module or a script file"
            )
        return f"{os.path.abspath(script)}:{attribute}"
    return f"{module_name}:{attribute}"


def load_agent(spec: str) -> Agent:
    """Import ``module:attribute`` or ``file.py:attribute``; call it if it is a factory."""
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute:
        raise ConfigurationError(
            f"crashtest agent {spec!r}: write module:attribute, e.g. myapp.agents:support"
        )
    try:
        if where.endswith(".py"):
            target: object = _import_file(Path(where))
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            target = importlib.import_module(where)
    except (ImportError, OSError) as exc:
        raise ConfigurationError(f"crashtest agent {spec!r}: cannot import {where}: {exc}") from exc
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ConfigurationError(
                f"crashtest agent {spec!r}: {where} has no attribute {attribute!r}"
            ) from None
    if not isinstance(target, Agent) and callable(target):
        target = target()
    if not isinstance(target, Agent):
        raise ConfigurationError(
            f"crashtest agent {spec!r} is a {type(target).__name__}, not an Agent (or a "
            "function returning one)"
        )
    return target


def _import_file(path: Path) -> types.ModuleType:
    path = path.resolve()
    name = "_crashtest_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # its siblings import as when run as a script
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check_model(agent: Agent, *, allow_real_model: bool) -> None:
    """Refuse a provider model whose base URL is not on this machine, unless allowed.

    A crash test asks the model again at every kill point. `ScriptedModel` and
    a model pointed at a loopback address (the shipped fake servers) are fine;
    other `ChatModel` classes are the user's own and are not second-guessed.
    """
    model = agent.model
    if isinstance(model, ScriptedModel) or allow_real_model:
        return
    known = _HTTP_MODELS.get(type(model).__module__)
    if known is None:
        return
    env, default = known
    fixed = getattr(model, "_fixed", None)
    url = str(
        getattr(fixed, "base_url", None)
        or getattr(model, "_base_url", None)
        or os.environ.get(env)
        or default
    )
    host = urlsplit(url).hostname or ""
    if host == "localhost" or _loopback(host):
        return
    raise ConfigurationError(
        f"crashtest would call {model.name} at {url} at every kill point, a paid API: point the "
        "agent at ScriptedModel or a fake server (durable_agent.testing.FakeOpenAIServer), or "
        "pass allow_real_model=True (--allow-real-model) to do it anyway"
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pure_by_inspection(tool: Tool) -> bool:
    """Whether ``tool``'s function calls nothing, imports nothing and changes nothing outside.

    Such a body (``return a + b``) cannot have an outside effect, so running it
    again is harmless. Anything else, even a call of ``str()``, counts as
    possibly effectful: the check errs on the side of asking for a key.
    """
    function = tool.function
    if not isinstance(function, types.FunctionType):
        return False
    return _code_is_pure(function.__code__)


def _code_is_pure(code: types.CodeType) -> bool:
    for instruction in dis.get_instructions(code):
        if instruction.opname.startswith(_NOT_PURE):
            return False
    return all(_code_is_pure(c) for c in code.co_consts if isinstance(c, types.CodeType))
