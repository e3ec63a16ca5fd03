"""Store URLs → backends: ``sqlite:///runs.db``, ``redis://…``, ``file:///runs``, ``memory://``.

| URL                                      | backend                                             |
|------------------------------------------|-----------------------------------------------------|
| ``memory://``                            | `MemoryBackend` (this process only)                 |
| ``sqlite:///runs.db``                    | `SqliteBackend`, path relative to the cwd           |
| ``sqlite:////var/lib/app/runs.db``       | `SqliteBackend`, absolute path                      |
| ``redis://[:password@]host[:port][/db]`` | `RedisBackend` (``rediss://`` for TLS)              |
| ``redis+cluster://host:port``            | `RedisBackend` on a cluster (``rediss+cluster://``) |
| ``postgresql://user:pw@host:port/db``    | `PostgresBackend` (also ``postgres://``)            |
| ``file:///var/lib/app/runs``             | `JsonFileBackend`, absolute folder                  |
| ``file:runs``                            | `JsonFileBackend`, folder relative to the cwd       |

Query parameters become keyword options of the backend, converted to the
types its constructor declares: ``sqlite:///runs.db?busy_timeout=10`` passes
``busy_timeout=10.0``, ``redis://host/0?prefix=app:&retention=86400`` passes
``prefix="app:"`` and ``retention=86400.0``, and
``postgresql://app@db/agents?schema=runs&sslmode=require`` passes
``schema="runs"`` (``sslmode`` stays in the URL, for libpq). An option the backend does not
take is an error that lists the ones it does.

Other schemes come from the ``durable_agent.backends`` entry-point group
(``postgres = "my_pkg.store:PostgresBackend"``) or from
`register_backend`; neither may silently replace a scheme that is taken.
Backends are imported only when their scheme is opened, so a missing driver
costs nothing until it is asked for, and then names the install command.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Final, Literal, get_args, get_origin
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from durable_agent.backend import Backend
from durable_agent.errors import ConfigurationError

__all__ = ["ENTRY_POINT_GROUP", "known_schemes", "open_backend", "register_backend"]

ENTRY_POINT_GROUP: Final = "durable_agent.backends"
"""The entry-point group third-party packages use to add URL schemes."""

_SCHEME: Final = re.compile(r"^[a-z][a-z0-9+.\-]*$")


@dataclass(frozen=True, slots=True)
class _Target:
    path: str
    """``module:Class``."""
    extra: str | None = None
    """The ``durable-agent[...]`` extra that installs its driver."""
    origin: str = "built in"


_BUILTIN: Final[dict[str, _Target]] = {
    "memory": _Target("durable_agent.backends.memory:MemoryBackend"),
    "sqlite": _Target("durable_agent.backends.sqlite:SqliteBackend"),
    "redis": _Target("durable_agent.backends.redis:RedisBackend", extra="redis"),
    "rediss": _Target("durable_agent.backends.redis:RedisBackend", extra="redis"),
    "redis+cluster": _Target("durable_agent.backends.redis:RedisBackend", extra="redis"),
    "rediss+cluster": _Target("durable_agent.backends.redis:RedisBackend", extra="redis"),
    "file": _Target("durable_agent.backends.jsonfile:JsonFileBackend"),
    "postgresql": _Target("durable_agent.backends.postgres:PostgresBackend", extra="postgres"),
    "postgres": _Target("durable_agent.backends.postgres:PostgresBackend", extra="postgres"),
}
_REGISTERED: dict[str, _Target] = {}
_PLUGINS: dict[str, list[_Target]] | None = None


def register_backend(scheme: str, target: str, *, replace: bool = False) -> None:
    """Make ``scheme://…`` URLs open the backend class ``target`` (``"module:Class"``).

    The module is imported when such a URL is first opened. The class is
    built as ``Class(url, session_id=..., user_id=..., **options)`` with the
    URL's query parameters as typed options (those it does not take stay in
    the URL), or by its ``from_url(url, *, session_id, user_id)`` class
    method when it has one. Registering a scheme that is already taken raises
    `ConfigurationError` unless ``replace=True`` says it is meant; built-in
    schemes cannot be replaced.
    """
    if not isinstance(scheme, str) or not _SCHEME.match(scheme.lower()):
        raise ConfigurationError(
            f"register_backend(scheme={scheme!r}): a scheme is letters, digits, '+', '-' or "
            "'.', starting with a letter (for example 'postgres')"
        )
    scheme = scheme.lower()
    if not isinstance(target, str) or not re.match(r"^[\w.]+:[\w.]+$", target):
        raise ConfigurationError(
            f"register_backend({scheme!r}, {target!r}): the target must be 'module:Class'"
        )
    if scheme in _BUILTIN:
        raise ConfigurationError(
            f"scheme {scheme!r} is built in ({_BUILTIN[scheme].path}) and cannot be replaced; "
            "register your backend under another scheme"
        )
    held = _REGISTERED.get(scheme) or _plugin_target(scheme)
    if held is not None and held.path != target and not replace:
        raise ConfigurationError(
            f"scheme {scheme!r} already opens {held.path} ({held.origin}); pass replace=True "
            "to register_backend if replacing it is intended"
        )
    _REGISTERED[scheme] = _Target(target, origin="register_backend")


def known_schemes() -> tuple[str, ...]:
    """The URL schemes `open_backend` understands: built in, registered and entry points."""
    return tuple(sorted({*_BUILTIN, *_REGISTERED, *_plugins()}))


def open_backend(
    url: str, *, session_id: str | None = None, user_id: str | None = None
) -> Backend:
    """Build the backend a store URL names (no I/O until first use)."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a store URL must be a str, got {type(url).__name__}")
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):", url)
    if match is None:
        raise ConfigurationError(
            f"{url!r} is not a store URL; use one like sqlite:///runs.db, "
            f"redis://localhost:6379/0 or file:///path/to/runs (known schemes: "
            f"{', '.join(known_schemes())})"
        )
    scheme = match.group(1).lower()
    target = _BUILTIN.get(scheme) or _REGISTERED.get(scheme) or _plugin_target(scheme)
    if target is None:
        raise ConfigurationError(
            f"unknown store scheme {scheme!r} in {_safe(url)!r}; known schemes: "
            f"{', '.join(known_schemes())} (others can be added with register_backend or the "
            f"{ENTRY_POINT_GROUP!r} entry-point group)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigurationError(f"malformed store URL {_safe(url)!r}: {exc}") from exc
    cls = _load(scheme, target)
    builder = _BUILDERS.get(scheme)
    if builder is not None:
        backend = builder(cls, url, parts, session_id, user_id)
    else:
        from_url = getattr(cls, "from_url", None)
        if callable(from_url):
            backend = from_url(url, session_id=session_id, user_id=user_id)
        else:
            rest, options = _split_options(cls, parts, url)
            backend = cls(rest, session_id=session_id, user_id=user_id, **options)
    if not isinstance(backend, Backend):
        raise ConfigurationError(f"{target.path} built {backend!r}, which is not a Backend")
    return backend


# -- building each built-in kind ---------------------------------------------------------------

_Builder = Callable[[type, str, SplitResult, str | None, str | None], Backend]


def _build_memory(
    cls: type, url: str, parts: SplitResult, session_id: str | None, user_id: str | None
) -> Backend:
    if parts.netloc or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"{url!r}: memory:// takes no host or path (runs live in this process)"
        )
    _, options = _split_options(cls, parts, url, keep_rest=False)
    return typing.cast(Backend, cls(session_id=session_id, user_id=user_id, **options))


def _build_sqlite(
    cls: type, url: str, parts: SplitResult, session_id: str | None, user_id: str | None
) -> Backend:
    # urlsplit keeps the leading slash: sqlite:///runs.db → "/runs.db" (relative)
    # and sqlite:////abs/runs.db → "//abs/runs.db" (absolute).
    if not url.lower().startswith("sqlite:///"):
        raise ConfigurationError(
            f"{url!r}: write sqlite:///relative.db or sqlite:////absolute/path.db "
            "(three slashes, then the path; a sqlite URL has no host)"
        )
    path = parts.path[1:]
    if not path:
        raise ConfigurationError(f"{url!r} names no database file")
    _, options = _split_options(cls, parts, url, keep_rest=False)
    return typing.cast(
        Backend, cls(unquote(path), session_id=session_id, user_id=user_id, **options)
    )


def _build_file(
    cls: type, url: str, parts: SplitResult, session_id: str | None, user_id: str | None
) -> Backend:
    if parts.netloc not in ("", "localhost"):
        raise ConfigurationError(
            f"{url!r}: a file URL names a folder on this machine: file:///absolute/folder or "
            "file:relative/folder (a host other than localhost is not supported)"
        )
    if parts.path in ("", "/"):
        raise ConfigurationError(f"{url!r} names no folder")
    _, options = _split_options(cls, parts, url, keep_rest=False)
    return typing.cast(
        Backend, cls(unquote(parts.path), session_id=session_id, user_id=user_id, **options)
    )


def _build_redis(
    cls: type, url: str, parts: SplitResult, session_id: str | None, user_id: str | None
) -> Backend:
    if not parts.hostname and not parts.path.strip("/"):
        raise ConfigurationError(f"{_safe(url)!r} names no Redis host")
    rest, options = _split_options(cls, parts, url)
    return typing.cast(Backend, cls(rest, session_id=session_id, user_id=user_id, **options))


def _build_postgres(
    cls: type, url: str, parts: SplitResult, session_id: str | None, user_id: str | None
) -> Backend:
    from durable_agent._redact import mark_secret

    # Marked before anything can fail, so no error below can show it.
    if parts.password:
        mark_secret(unquote(parts.password))
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigurationError(f"{_safe(url)!r} names no PostgreSQL host")
    rest, options = _split_options(cls, parts, url)
    return typing.cast(Backend, cls(rest, session_id=session_id, user_id=user_id, **options))


_BUILDERS: Final[dict[str, _Builder]] = {
    "memory": _build_memory,
    "sqlite": _build_sqlite,
    "file": _build_file,
    "redis": _build_redis,
    "rediss": _build_redis,
    "redis+cluster": _build_redis,
    "rediss+cluster": _build_redis,
    "postgresql": _build_postgres,
    "postgres": _build_postgres,
}


# -- options -----------------------------------------------------------------------------------

_NOT_OPTIONS: Final = frozenset({"self", "session_id", "user_id"})


def _split_options(
    cls: type, parts: SplitResult, url: str, *, keep_rest: bool = True
) -> tuple[str, dict[str, object]]:
    """Take the query parameters ``cls`` accepts as keyword options, typed by its signature.

    Returns the URL without them and the options. With ``keep_rest=False`` a
    parameter the class does not take is an error; otherwise it stays in the
    URL (for the driver, e.g. redis-py's ``socket_timeout``).
    """
    accepted = _keyword_options(cls)
    options: dict[str, object] = {}
    rest: list[tuple[str, str]] = []
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        if name in accepted:
            options[name] = _convert(cls, name, raw, accepted[name], url)
        elif keep_rest:
            rest.append((name, raw))
        else:
            raise ConfigurationError(
                f"{_safe(url)!r}: {cls.__name__} takes no option {name!r}; it takes "
                f"{', '.join(sorted(accepted)) or 'none'}"
            )
    remaining = urlunsplit(parts._replace(query=urlencode(rest)))
    return remaining, options


def _keyword_options(cls: type) -> dict[str, object]:
    init = getattr(cls, "__init__", None)
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # an annotation that does not resolve: take strings as given
        hints = {}
    accepted: dict[str, object] = {}
    for name, param in inspect.signature(cls).parameters.items():
        if name in _NOT_OPTIONS or param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        accepted[name] = hints.get(name, str)
    return accepted


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _convert(cls: type, name: str, raw: str, hint: object, url: str) -> object:
    """``raw`` as the type ``hint`` declares (str, int, float, bool, Literal, X | None)."""
    candidates = _flatten(hint)
    if type(None) in candidates and raw.lower() in ("", "none", "null"):
        return None
    for kind in candidates:
        if get_origin(kind) is Literal:
            for value in get_args(kind):
                if str(value) == raw or (isinstance(value, str) and value.lower() == raw.lower()):
                    return value
            continue
        try:
            if kind is bool:
                if raw.lower() in _TRUE:
                    return True
                if raw.lower() in _FALSE:
                    return False
                continue
            if kind is int:
                return int(raw)
            if kind is float:
                return float(raw)
            if kind is str:
                return raw
        except ValueError:
            continue
    expected = " or ".join(_describe(k) for k in candidates)
    raise ConfigurationError(
        f"{_safe(url)!r}: option {name}={raw!r} of {cls.__name__} must be {expected}"
    )


def _flatten(hint: object) -> list[object]:
    if isinstance(hint, types.UnionType) or get_origin(hint) is typing.Union:
        out: list[object] = []
        for arg in get_args(hint):
            out.extend(_flatten(arg))
        # bool before int before float, so "10" for an `int | float` stays an int.
        order: list[object] = [bool, int, float]
        return sorted(out, key=lambda k: order.index(k) if k in order else len(order))
    return [hint]


def _describe(kind: object) -> str:
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(kind))
    if kind is type(None):
        return "none"
    return getattr(kind, "__name__", str(kind))


# -- loading -----------------------------------------------------------------------------------


def _load(scheme: str, target: _Target) -> type:
    module_name, _, class_name = target.path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module_name
        if target.extra is not None:
            hint = f"pip install 'durable-agent[{target.extra}]'"
        else:
            hint = f"install the package that provides {module_name}"
        raise ConfigurationError(
            f"store scheme {scheme!r} needs {missing!r}, which is not installed: {hint}"
        ) from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Backend):
        raise ConfigurationError(
            f"store scheme {scheme!r} names {target.path} ({target.origin}), which is not a "
            "Backend subclass"
        )
    return cls


def _plugins() -> dict[str, list[_Target]]:
    global _PLUGINS
    if _PLUGINS is None:
        found: dict[str, list[_Target]] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            origin = f"entry point of {dist.name}" if dist is not None else "entry point"
            found.setdefault(ep.name.lower(), []).append(_Target(ep.value, origin=origin))
        _PLUGINS = found
    return _PLUGINS


def _plugin_target(scheme: str) -> _Target | None:
    """The entry point for ``scheme`` (built-in schemes are never looked up here)."""
    claims = {t.path: t for t in _plugins().get(scheme, [])}
    if not claims:
        return None
    if len(claims) > 1:
        raise ConfigurationError(
            f"store scheme {scheme!r} is claimed by several entry points: "
            f"{', '.join(f'{t.path} ({t.origin})' for t in claims.values())}; uninstall one "
            "or call register_backend(scheme, ..., replace=True) to choose"
        )
    return next(iter(claims.values()))


def _safe(url: str) -> str:
    """``url`` with any password replaced, for error messages."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
