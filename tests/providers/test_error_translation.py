"""Each SDK exception becomes the same durable-agent error, worded the same, in both adapters.

The SDKs' exceptions are built here directly (no server), so every branch of
the translation is pinned, the rare ones included: an error event inside a
stream, retryable or not by its type, and the SDK's base error.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import pytest

from durable_agent.errors import (
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelResponseError,
    ModelTimeoutError,
)

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

from durable_agent.models.anthropic import AnthropicModel  # noqa: E402
from durable_agent.models.openai import OpenAIModel  # noqa: E402

BASE = "http://127.0.0.1:9/v1"
REQUEST = httpx.Request("POST", f"{BASE}/chat")
CLIENT: Any = SimpleNamespace(base_url=BASE)
"""What the translation reads of the client: only its URL, for the message."""

MODELS = {
    "openai": (OpenAIModel("gpt-x", api_key="test-key-translation", timeout=7), openai, "OpenAI"),
    "anthropic": (
        AnthropicModel("claude-x", api_key="test-key-translation", timeout=7),
        anthropic,
        "Anthropic",
    ),
}


@pytest.fixture(params=sorted(MODELS))
def adapter(request: pytest.FixtureRequest) -> tuple[Any, Any, str]:
    return MODELS[request.param]


def _translated(model: Any, exc: Exception) -> ModelError | None:
    result: ModelError | None = model._translated(exc, CLIENT)
    return result


def test_timeouts_both_builtin_and_sdk_say_the_configured_timeout(
    adapter: tuple[Any, Any, str],
) -> None:
    model, sdk, provider = adapter
    label = type(model).__name__
    for exc in (TimeoutError(), sdk.APITimeoutError(request=REQUEST)):
        error = _translated(model, exc)
        assert type(error) is ModelTimeoutError
        assert str(error) == (
            f"{provider} model {model.model!r} did not answer within 7 s "
            f"({label} timeout=7); retryable"
        )


def test_an_error_status_is_an_http_error_classified_by_status(
    adapter: tuple[Any, Any, str],
) -> None:
    model, sdk, provider = adapter
    for status, retryable in ((503, True), (400, False)):
        response = httpx.Response(status, request=REQUEST, headers={"retry-after": "3"})
        body = {"error": {"message": "nope"}}
        error = _translated(model, sdk.APIStatusError("nope", response=response, body=body))
        assert isinstance(error, ModelHTTPError)
        assert (error.status_code, error.retryable) == (status, retryable)
        assert error.retry_after == (3.0 if retryable else None)
        if retryable:
            assert str(error) == f"HTTP 503: {provider} answered 503 (nope); retryable"
        else:
            assert str(error).startswith(f"HTTP 400: {provider} refused the request (nope); ")


def test_an_unreachable_server_names_the_url(adapter: tuple[Any, Any, str]) -> None:
    model, sdk, provider = adapter
    error = _translated(model, sdk.APIConnectionError(request=REQUEST))
    assert type(error) is ModelConnectionError
    assert str(error).startswith(f"{provider} could not be reached at {BASE} (")
    assert str(error).endswith("); retryable")


def test_an_unreadable_body_is_a_retryable_malformed_answer(
    adapter: tuple[Any, Any, str],
) -> None:
    model, sdk, provider = adapter
    response = httpx.Response(200, request=REQUEST)
    for exc, detail in (
        (sdk.APIResponseValidationError(response, None, message="bad shape"), "bad shape"),
        (json.JSONDecodeError("Expecting value", "x", 0), "the body is not JSON ("),
    ):
        error = _translated(model, exc)
        assert type(error) is ModelResponseError
        assert error.retryable
        assert str(error).startswith(f"{provider} sent an answer that cannot be read: {detail}")
        assert str(error).endswith("; retryable")


def test_the_sdks_other_errors_are_client_errors_and_foreign_ones_are_left_alone(
    adapter: tuple[Any, Any, str],
) -> None:
    model, sdk, provider = adapter
    base = sdk.OpenAIError if sdk is openai else sdk.AnthropicError
    error = _translated(model, base("the client broke"))
    assert type(error) is ModelError
    assert str(error) == f"{provider} client error: the client broke"
    assert _translated(model, ValueError("not the SDK's")) is None


def _error_event(provider: str, kind: str) -> Exception:
    """What each SDK raises for an ``error`` event inside a stream (the status was 200)."""
    if provider == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": "busy"}}
        response = httpx.Response(200, request=REQUEST)
        return anthropic.APIStatusError("busy", response=response, body=body)
    return openai.APIError("busy", REQUEST, body={"type": kind, "message": "busy"})


@pytest.mark.parametrize(
    ("provider", "kind", "retryable"),
    [
        ("anthropic", "overloaded_error", True),
        ("anthropic", "invalid_request_error", False),
        ("openai", "server_error", True),
        ("openai", "invalid_request_error", False),
    ],
)
def test_an_error_event_mid_stream_is_retryable_by_its_type(
    provider: str, kind: str, retryable: bool
) -> None:
    model, _, name = MODELS[provider]
    error = _translated(model, _error_event(provider, kind))
    assert type(error) is ModelResponseError
    assert error.retryable is retryable
    assert str(error) == (
        f"{name} broke off the stream with an error ({kind}: busy)"
        + ("; retryable" if retryable else "")
    )
