"""What `OpenAIModel` and `AnthropicModel` share: their life around a vendor SDK client.

Both adapters hold an SDK client with its retries off (or build one per event
loop on the shared HTTP pool), bound every call by their ``timeout``, and
translate the SDK's exceptions into `durable_agent.errors` types the same way.
The vendor's parts stay in its adapter: the request's shape, the reading of an
answer and of a stream's events, and which SDK errors mean that a stream broke
off. Nothing here imports an SDK: the SDK's classes are passed in.
"""

from __future__ import annotations

import asyncio
import json
import os
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypeVar, cast

from durable_agent._redact import redact
from durable_agent.errors import (
    ModelConnectionError,
    ModelError,
    ModelResponseError,
    ModelTimeoutError,
)
from durable_agent.models import ChatModel, ModelResponse, OutputSchema, ToolDefinition
from durable_agent.models._http import (
    LoopHTTPClients,
    LoopSDKClients,
    describe_cause,
    http_error,
    mark_secrets,
    provider_message,
    public_url,
    redacted,
    require_api_key,
)

if TYPE_CHECKING:
    from durable_agent.records import Message

__all__ = [
    "Credentials",
    "SDKErrors",
    "SDKModel",
    "broke_off",
    "broken_mid_stream",
    "client_error",
    "loop_http_clients",
    "malformed",
    "translate_sdk_error",
]


class _SDKClient(Protocol):
    @property
    def base_url(self) -> object: ...

    def with_options(self, *, max_retries: int) -> Self: ...


ClientT = TypeVar("ClientT", bound=_SDKClient)
HttpT = TypeVar("HttpT")
R = TypeVar("R")


class _ClosableHTTP(Protocol):
    @property
    def is_closed(self) -> bool: ...

    async def aclose(self) -> None: ...


H = TypeVar("H", bound=_ClosableHTTP)


class _APIError(Protocol):
    message: str


class _StatusError(_APIError, Protocol):
    """What both SDKs' ``APIStatusError`` carries."""

    status_code: int
    body: object
    request_id: str | None

    @property
    def response(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a caller's SDK client authenticates with: the secret, and what to mark secret."""

    secret: str | None
    """The client's own credential (its API key, or a bearer token)."""
    key: object
    """The API key to mark secret (None when the client has none)."""
    extra: Iterable[object] = ()
    """Other values to mark secret (a bearer token)."""


@dataclass(frozen=True, slots=True)
class SDKErrors:
    """An SDK's exception classes, as `translate_sdk_error` asks about them."""

    timeout: type[Exception]
    status: type[Exception]
    connection: type[Exception]
    validation: type[Exception]

    @classmethod
    def of(cls, sdk: ModuleType) -> SDKErrors:
        """The classes of ``sdk`` (``openai`` or ``anthropic``: both SDKs name them alike)."""
        return cls(
            timeout=sdk.APITimeoutError,
            status=sdk.APIStatusError,
            connection=sdk.APIConnectionError,
            validation=sdk.APIResponseValidationError,
        )


class SDKModel(ChatModel, Generic[ClientT, HttpT]):
    """The part of a vendor adapter that is not the vendor's (see the module docstring)."""

    _label: ClassVar[str]
    """The class's public name, as ``repr`` and the timeout message spell it."""
    _prefix: ClassVar[str]
    """The model-string prefix: ``name`` is ``"<prefix>/<model>"``."""
    _provider: ClassVar[str]
    _key_env: ClassVar[str]
    _base_url_env: ClassVar[str]

    model: str
    timeout: float

    def _connect(
        self,
        *,
        owner: str,
        api_key: str | None,
        base_url: str | None,
        headers: Mapping[str, str] | None,
        client: ClientT | None,
        credentials: Callable[[ClientT], Credentials],
        http: LoopHTTPClients[HttpT],
    ) -> None:
        """Adopt the caller's ``client``, or check the key to build one per loop on ``http``.

        ``credentials`` reads the adopted client's.
        """
        self._headers = dict(headers or {})
        self._base_url = base_url
        if client is not None:
            # with_options copies the client (sharing its connection pool) with
            # retries off: the engine's policy must be the only retry.
            ready = client.with_options(max_retries=0)
            held = credentials(ready)
            self._secret: str | None = held.secret
            self._fixed: ClientT | None = ready
            mark_secrets(
                key=held.key,
                headers=getattr(ready, "_custom_headers", {}),
                base_url=ready.base_url,
                extra=held.extra,
            )
        else:
            self._secret = require_api_key(api_key, env_var=self._key_env, owner=owner)
            self._fixed = None
            mark_secrets(
                key=self._secret,
                headers=self._headers,
                base_url=base_url if base_url is not None else os.environ.get(self._base_url_env),
            )
        self._clients = LoopSDKClients(http, self._new_client)

    @abstractmethod
    def _new_client(self, http: HttpT) -> ClientT:
        """This model's SDK client on ``http``, built from `_client_options`."""

    def _client_options(self, http: HttpT) -> dict[str, Any]:
        """The SDK client's keyword arguments: retries off, on the loop's shared pool."""
        return {
            "api_key": self._secret,
            "base_url": self._base_url,
            "timeout": self.timeout,
            "max_retries": 0,
            "default_headers": self._headers or None,
            "http_client": http,
        }

    def __repr__(self) -> str:
        return f"{self._label}({self.model!r})"

    @property
    def name(self) -> str:
        return f"{self._prefix}/{self.model}"

    def _client(self) -> ClientT:
        return self._fixed if self._fixed is not None else self._clients.get()

    async def request(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> ModelResponse:
        return await redacted(self._request(messages, tools, output_schema))

    @abstractmethod
    async def _request(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None,
    ) -> ModelResponse:
        """One request, its failure translated (`request` cleans it of secrets)."""

    @abstractmethod
    def _translated(self, exc: Exception, client: ClientT) -> ModelError | None:
        """Our error for an SDK (or stream) failure, or None for one that is not the SDK's."""

    async def _call(
        self, client: ClientT, call: Callable[[], Awaitable[R]], *, deadline: float
    ) -> R:
        """``call()`` awaited until ``deadline`` (loop time), an SDK failure translated."""
        try:
            async with asyncio.timeout_at(deadline):
                return await call()
        except Exception as exc:
            mine = self._translated(exc, client)
            if mine is None:
                raise
            raise mine from exc

    def _timeout_error(self) -> ModelTimeoutError:
        return ModelTimeoutError(
            f"{self._provider} model {self.model!r} did not answer within {self.timeout:g} s "
            f"({self._label} timeout={self.timeout:g}); retryable"
        )


def translate_sdk_error(
    exc: Exception,
    *,
    errors: SDKErrors,
    model: SDKModel[Any, Any],
    base_url: object,
) -> ModelError | None:
    """Our error for the failures both SDKs raise alike, or None for any other.

    Timeouts, HTTP error statuses, unreachable servers and unreadable bodies;
    the caller decides the rest (a stream's error event, the SDK's base error).
    """
    provider = model._provider
    if isinstance(exc, TimeoutError | errors.timeout):
        return model._timeout_error()
    if isinstance(exc, errors.status):
        status = cast("_StatusError", exc)
        return http_error(
            provider=provider,
            status=status.status_code,
            message=provider_message(status.body, status.message),
            headers=status.response.headers,
            request_id=status.request_id,
            model=model.model,
            base_url=public_url(base_url),
            key_env=model._key_env,
        )
    if isinstance(exc, errors.connection):
        return ModelConnectionError(
            f"{provider} could not be reached at {public_url(base_url)} "
            f"({describe_cause(exc)}); retryable"
        )
    if isinstance(exc, errors.validation):
        return malformed(provider, cast("_APIError", exc).message)
    if isinstance(exc, json.JSONDecodeError):
        return malformed(provider, f"the body is not JSON ({exc})")
    return None


def broke_off(
    provider: str, kind: object, body: object, message: str, *, retryable: bool
) -> ModelResponseError:
    """The error for an error event inside a stream (the status was 200): the server broke off."""
    return ModelResponseError(
        f"{provider} broke off the stream with an error ({kind}: "
        f"{provider_message(body, message)})" + ("; retryable" if retryable else ""),
        retryable=retryable,
    )


def broken_mid_stream(provider: str, exc: BaseException) -> ModelConnectionError:
    """The error for a connection lost while a stream's body was read."""
    return ModelConnectionError(
        f"the connection to {provider} broke mid-stream ({describe_cause(exc)}); retryable"
    )


def client_error(provider: str, exc: Exception) -> ModelError:
    """The error for any other failure of the SDK's own."""
    return ModelError(f"{provider} client error: {redact(str(exc))}")


def malformed(provider: str, detail: str) -> ModelResponseError:
    """The error for an answer that cannot be read: retryable, another attempt may read."""
    return ModelResponseError(
        f"{provider} sent an answer that cannot be read: {redact(detail)}; retryable",
        retryable=True,
    )


def loop_http_clients(factory: Callable[[], H]) -> LoopHTTPClients[H]:
    """Connections to a provider: one pool per event loop, shared by every model."""
    return LoopHTTPClients(factory, _close_http, _is_closed)


async def _close_http(client: _ClosableHTTP) -> None:
    await client.aclose()


def _is_closed(client: _ClosableHTTP) -> bool:
    return client.is_closed
