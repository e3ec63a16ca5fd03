"""What the vendor adapters share: error classification, Retry-After, keys, clients.

The adapters (`durable_agent.models.openai`, `durable_agent.models.anthropic`)
translate their SDK's exceptions into ours at the boundary; this module holds
the provider-neutral half of that translation, so both classify a status code,
read a ``Retry-After`` and word a "what to fix" message the same way. No SDK is
imported here.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import re
import time
import unicodedata
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Generic, TypeVar

from durable_agent._redact import mark_secret, redact, redact_exception
from durable_agent.errors import (
    ConfigurationError,
    ModelHTTPError,
    ModelNotAvailableError,
    ModelResponseError,
)
from durable_agent.records import JSONValue

__all__ = [
    "LoopHTTPClients",
    "LoopSDKClients",
    "check_max_tokens",
    "check_timeout",
    "describe_cause",
    "http_error",
    "install_hint",
    "mark_secrets",
    "parse_arguments",
    "provider_message",
    "public_url",
    "redacted",
    "require_api_key",
    "retry_after_seconds",
    "safe_name",
]

C = TypeVar("C")
S = TypeVar("S")
R = TypeVar("R")

RETRYABLE_STATUSES: Final = frozenset({408, 409, 429, 529})
"""Besides every 5xx: timeouts, conflicts, rate limits and Anthropic's overload."""

_WHAT_TO_FIX: Final[dict[int, str]] = {
    400: "the request was rejected as invalid; retrying sends the same request, so fix it "
    "(model name, tool schemas, output schema or message history)",
    401: "authentication failed: check the API key in {key_env} (or pass api_key=...)",
    402: "payment required: check the billing of the account behind the API key",
    403: "permission denied: the API key may not use model {model!r}; check its project, "
    "organization and permissions",
    404: "not found: check the model name {model!r} and the base URL {base_url}",
    413: "the request is too large: shorten the conversation or the tool results",
    422: "the request could not be processed: fix its parameters",
}


def install_hint(package: str, extra: str) -> ModelNotAvailableError:
    """The error for a missing vendor SDK, with the exact install command."""
    return ModelNotAvailableError(
        f"the {package!r} package is not installed; install it with "
        f'pip install "durable-agent[{extra}]"'
    )


def require_api_key(explicit: str | None, *, env_var: str, owner: str) -> str:
    """The API key from ``explicit`` or ``env_var``, stripped of surrounding whitespace.

    Checked when the model is built, so a bad key fails before any run starts:
    a missing or blank key, or one that still holds a character no HTTP header
    may carry (a control character, a space, anything outside visible ASCII)
    once surrounding whitespace is stripped, is a `ConfigurationError` that
    names where the key came from and the offending position, never the key.
    """
    source = "api_key=..." if explicit is not None else f"the {env_var} environment variable"
    key = explicit if explicit is not None else os.environ.get(env_var)
    if not isinstance(key, str) or not key.strip():
        raise ConfigurationError(
            f"{owner} needs an API key: set the {env_var} environment variable or pass "
            f"api_key=...; a local server that ignores keys still needs a non-empty one"
        )
    # A key read from a file or a shell variable often ends in a newline, which
    # the HTTP client would refuse, quoting the key in its error.
    key = key.strip()
    for position, char in enumerate(key, start=1):
        if not "!" <= char <= "~":
            raise ConfigurationError(
                f"{owner}: the API key from {source} holds {_kind(char)} at position "
                f"{position} of {len(key)} (after stripping surrounding whitespace); an "
                "API key is visible ASCII only: check the file or variable it was read "
                "from (the key is not shown)"
            )
    return key


def _kind(char: str) -> str:
    code = f"U+{ord(char):04X}"
    if char == " ":
        return "a space"
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"a control character ({code}, {_CONTROL_NAMES.get(char, 'control')})"
    return f"a non-ASCII character ({code}, {unicodedata.name(char, 'unnamed')})"


_CONTROL_NAMES: Final = {
    "\n": "line feed", "\r": "carriage return", "\t": "tab", "\x00": "NUL", "\x7f": "DEL"
}


def mark_secrets(
    *, key: object, headers: Mapping[str, str], base_url: object, extra: Iterable[object] = ()
) -> None:
    """Mark what a model was given as secret: its key, header values, a URL's password.

    Values shorter than the redaction minimum are skipped (see
    `durable_agent.mark_secret`), so a header ``x-shard: 1`` leaves digits alone.
    """
    values = [key, *headers.values(), *extra]
    if base_url is not None:
        values.append(urllib.parse.urlsplit(str(base_url)).password)
    mark_secret(*(v for v in values if isinstance(v, str)))


def check_max_tokens(value: object, owner: str) -> None:
    """``max_tokens`` must be a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{owner}: max_tokens must be a positive int, got {value!r}")


def check_timeout(timeout: object, owner: str) -> float:
    """A positive, finite per-call timeout in seconds."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ConfigurationError(f"{owner}: timeout must be positive seconds, got {timeout!r}")
    return float(timeout)


def safe_name(name: str, *, limit: int = 64) -> str:
    """``name`` restricted to the ``[a-zA-Z0-9_-]`` both APIs accept for names and ids."""
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:limit]
    return cleaned or "_"


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, or ``Retry-After`` seconds or date.

    Returns None when no header is present or parseable; never a negative number.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(value):
                return max(value, 0.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        value = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
    return max(value, 0.0) if math.isfinite(value) else None


def provider_message(body: object, fallback: str) -> str:
    """The human-readable message of an error body (``{"error": {"message": ...}}`` shapes).

    A body that is not JSON (a proxy's error page) is quoted, shortened.
    """
    # Redacted before it is shortened: a secret cut in two would no longer match.
    if isinstance(body, str) and body.strip():
        return f"{redact(fallback)}: {redact(' '.join(body.split()))[:200]}"
    current = body
    for _ in range(2):
        if isinstance(current, Mapping):
            message = current.get("message")
            if isinstance(message, str) and message:
                return redact(message)[:500]
            current = current.get("error")
    return redact(fallback)[:500]


def http_error(
    *,
    provider: str,
    status: int,
    message: str,
    headers: Mapping[str, str],
    request_id: str | None,
    model: str,
    base_url: str,
    key_env: str,
) -> ModelHTTPError:
    """Our `ModelHTTPError` for an HTTP error status, classified and worded.

    408, 409, 429, 529 and every 5xx are retryable (the engine's retry policy
    then honours ``Retry-After``); every other status is not, and the message
    says what to fix.
    """
    retryable = status in RETRYABLE_STATUSES or status >= 500
    said = redact(message)
    if retryable:
        text = f"{provider} answered {status} ({said}); retryable"
    else:
        hint = _WHAT_TO_FIX.get(
            status, "the provider refused the request; retrying would not help"
        ).format(key_env=key_env, model=model, base_url=base_url)
        text = f"{provider} refused the request ({said}); {hint}"
    return ModelHTTPError(
        status,
        text,
        retryable=retryable,
        request_id=request_id,
        retry_after=retry_after_seconds(headers) if retryable else None,
    )


def public_url(url: object) -> str:
    """``url`` as text without any user:password part, for error messages."""
    parts = urllib.parse.urlsplit(str(url))
    if parts.username is None and parts.password is None:
        return parts.geturl()
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return parts._replace(netloc=netloc).geturl()


def describe_cause(exc: BaseException) -> str:
    """The lowest cause of a connection failure, as ``Type: message``, redacted."""
    cause: BaseException = exc
    seen: set[int] = set()
    while cause.__cause__ is not None and id(cause.__cause__) not in seen:
        seen.add(id(cause))
        cause = cause.__cause__
    text = str(cause) or type(cause).__name__
    return redact(f"{type(cause).__name__}: {text}")[:300]


def parse_arguments(raw: str, *, provider: str, tool: str) -> dict[str, JSONValue]:
    """Tool-call arguments sent as JSON text; a model that sent something else may retry."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ModelResponseError(
            f"{provider} model sent arguments for tool {tool!r} that are not JSON; retryable",
            retryable=True,
        ) from exc
    if not isinstance(value, dict):
        raise ModelResponseError(
            f"{provider} model sent arguments for tool {tool!r} that are not a JSON object; "
            "retryable",
            retryable=True,
        )
    return value


_KEEPERS: set[asyncio.Task[None]] = set()
"""The tasks that close shared HTTP clients at loop shutdown (the loop holds tasks weakly)."""


class LoopHTTPClients(Generic[C]):
    """One HTTP client per event loop, shared by every model of one SDK on that loop.

    Connection pools belong to the loop they were opened on, and the
    synchronous ``agent.do()`` runs each call under a fresh ``asyncio.run()``.
    So each loop gets its own client, and a task that only waits is parked on
    the loop: ``asyncio.run`` cancels it at shutdown, and it closes the client
    there, before the loop is gone (no unclosed sockets, no ``ResourceWarning``).
    Models hold no connections of their own, so one that is dropped while its
    loop runs leaks nothing; the pool is bounded by the loops, not the models.
    """

    def __init__(
        self,
        factory: Callable[[], C],
        close: Callable[[C], Awaitable[None]],
        is_closed: Callable[[C], bool],
    ) -> None:
        self._factory = factory
        self._close = close
        self._is_closed = is_closed
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, C] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> C:
        """The running loop's client, built on first use (or after it was closed)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or self._is_closed(client):
            client = self._factory()
            self._clients[loop] = client
            keeper = loop.create_task(
                _close_at_shutdown(loop, client, self._close),
                name="durable-agent: close the HTTP client at loop shutdown",
            )
            _KEEPERS.add(keeper)
            keeper.add_done_callback(_KEEPERS.discard)
        return client


async def _close_at_shutdown(
    loop: asyncio.AbstractEventLoop, client: C, close: Callable[[C], Awaitable[None]]
) -> None:
    try:
        await loop.create_future()
    finally:
        await close(client)


class LoopSDKClients(Generic[C, S]):
    """One model's SDK client per event loop, wrapping that loop's shared HTTP client.

    The SDK client is a thin wrapper (about 30 us to build), kept per loop and
    rebuilt when the loop's HTTP client was replaced; the connections live in
    the shared `LoopHTTPClients`.
    """

    def __init__(self, http: LoopHTTPClients[C], build: Callable[[C], S]) -> None:
        self._http = http
        self._build = build
        self._cache: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[C, S]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> S:
        """The running loop's SDK client."""
        http = self._http.get()
        loop = asyncio.get_running_loop()
        cached = self._cache.get(loop)
        if cached is None or cached[0] is not http:
            cached = (http, self._build(http))
            self._cache[loop] = cached
        return cached[1]


async def redacted(call: Awaitable[R]) -> R:
    """Await an adapter's request, cleaning the exception chain of any secret before it leaves.

    The SDK exception ours is chained from may quote a secret (httpx quotes a
    header value it refuses): it is cleaned before anyone prints it.
    """
    try:
        return await call
    except Exception as exc:
        redact_exception(exc)
        raise
