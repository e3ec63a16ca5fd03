"""The redaction step: every form of a marked secret, the short-value rule, exception chains."""

from __future__ import annotations

import html
import json
import traceback
import urllib.parse
import uuid

import pytest

from durable_agent import (
    ConfigurationError,
    RedactedError,
    RunFailedError,
    mark_secret,
    redact,
    redact_exception,
)
from durable_agent.models._http import describe_cause, provider_message
from durable_agent.records import ErrorInfo


def fresh(prefix: str = "s3cr3t") -> str:
    """A secret no other test marked: a prefix, special characters and a random hex tail."""
    return f"{prefix}-pä$$ wörd/\"'+&<{uuid.uuid4().hex[:12]}"


SECRET = fresh()
mark_secret(SECRET)
TAIL = SECRET[-12:]

FORMS = {
    "plain": SECRET,
    "repr": repr(SECRET),
    "ascii": ascii(SECRET),
    "json": json.dumps(SECRET),
    "json-unicode": json.dumps(SECRET, ensure_ascii=False),
    "json-slash": json.dumps(SECRET).replace("/", "\\/"),
    "json-in-json": json.dumps(json.dumps(SECRET)),
    "json-in-repr": repr(json.dumps(SECRET)),
    "bytes": str(SECRET.encode()),
    "bytes-repr": repr(SECRET.encode()),
    "percent": urllib.parse.quote(SECRET, safe=""),
    "percent-lower": urllib.parse.quote(SECRET, safe="").lower(),
    "percent-path": urllib.parse.quote(SECRET),
    "percent-plus": urllib.parse.quote_plus(SECRET),
    "html": html.escape(SECRET),
    "bearer": f"Authorization: Bearer {SECRET}",
    "newline": f"'{SECRET}\\n'",
}


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_every_form_of_a_marked_secret_is_redacted(form: str) -> None:
    said = redact(f"the server said: {form} (end)")
    assert TAIL not in said
    assert "[redacted]" in said
    assert said.startswith("the server said: ")
    assert said.endswith(" (end)")


def test_the_stripped_value_is_what_is_matched() -> None:
    secret = fresh("padded")
    assert mark_secret(f"\n  {secret}\r\n")
    assert redact(f"key={secret}\n") == "key=[redacted]\n"


@pytest.mark.parametrize("short", ["1", "true", "abc1234", "  1234567  \n"])
def test_a_value_under_eight_characters_is_never_redacted(short: str) -> None:
    assert mark_secret(short) is False
    text = f"1 true abc1234 {short.strip()} x-shard: 1 in 1234567 ms"
    assert redact(text) == text


def test_eight_characters_are_redacted() -> None:
    assert mark_secret("Zq8#vW3r")
    assert redact("key Zq8#vW3r.") == "key [redacted]."


def test_a_bearer_token_is_redacted_even_when_it_was_never_marked() -> None:
    assert redact("Authorization: Bearer abc123.def456-ghi") == "Authorization: Bearer [redacted]"
    assert redact("Authorization: Basic dXNlcjpodW50ZXIy") == "Authorization: Basic [redacted]"
    for prose in ("a Bearer of news", "Basic information", "Bearer tokenless"):
        assert redact(prose) == prose


def test_only_str_values_can_be_marked() -> None:
    with pytest.raises(ConfigurationError, match="str"):
        mark_secret(b"bytes-are-not-text")  # type: ignore[arg-type]


def test_a_provider_message_is_redacted_before_it_is_shortened() -> None:
    """A secret cut in two would no longer match: no prefix of it may survive the cut."""
    for filler in range(480, 500):
        body = {"error": {"message": "x" * filler + SECRET}}
        said = provider_message(body, "fallback")
        assert not any(SECRET[:n] in said for n in range(8, len(SECRET)))
    said = provider_message(" " * 3 + "y" * 190 + SECRET, "a proxy page")
    assert "s3cr3t-p" not in said


def test_describe_cause_redacts_the_lowest_cause() -> None:
    low = ValueError(f"Illegal header value b'Bearer {SECRET}\\n'")
    top = ConnectionError("connection failed")
    top.__cause__ = low
    assert TAIL not in describe_cause(top)


def test_a_stored_error_record_never_holds_a_secret() -> None:
    info = ErrorInfo.from_exception(RuntimeError(repr(SECRET.encode())))
    assert TAIL not in info.message
    assert info.type == "builtins.RuntimeError"


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_leaking_link_of_a_chain_is_replaced_and_the_rest_kept() -> None:
    root = _raise(KeyError("clean root"))
    leaky = _raise(RuntimeError(f"bad {SECRET!r}"))
    leaky.__cause__ = root
    leaky.add_note(f"note {urllib.parse.quote(SECRET)}")
    top = RunFailedError("r1", "ERROR", "TOOL_EXEC", "tool failed")
    top.__cause__ = leaky
    top.__context__ = leaky
    redact_exception(top)
    stand_in = top.__cause__
    assert isinstance(stand_in, RedactedError)
    assert stand_in.original_type == "builtins.RuntimeError"
    assert "bad '[redacted]'" in str(stand_in)
    assert stand_in.__notes__ == ["note [redacted]"]
    assert stand_in.__traceback__ is leaky.__traceback__, "where it was raised stays visible"
    assert stand_in.__cause__ is root, "a clean link is kept as it is"
    assert top.__context__ is stand_in
    assert top.__suppress_context__
    printed = "".join(traceback.format_exception(top))
    assert TAIL not in printed
    assert "_raise" in printed


def test_a_context_is_cleaned_and_its_suppression_kept() -> None:
    top = _raise(ValueError("while handling"))
    top.__context__ = _raise(OSError(SECRET))
    assert not top.__suppress_context__
    redact_exception(top)
    assert isinstance(top.__context__, RedactedError)
    assert not top.__suppress_context__
    assert TAIL not in "".join(traceback.format_exception(top))


def test_a_leaking_top_exception_is_redacted_in_place() -> None:
    top = RuntimeError(SECRET, SECRET.encode())
    redact_exception(top)
    assert TAIL not in str(top)
    assert TAIL not in repr(top)


def test_a_clean_chain_is_left_untouched() -> None:
    cause = ValueError("fine")
    top = RuntimeError("also fine")
    top.__cause__ = cause
    redact_exception(top)
    assert top.__cause__ is cause
    assert top.__suppress_context__


def test_a_cycle_in_a_chain_ends() -> None:
    a, b = RuntimeError(SECRET), ValueError("b")
    a.__context__, b.__context__ = b, a
    redact_exception(b)
    assert isinstance(b.__context__, RedactedError)
    assert TAIL not in "".join(traceback.format_exception(b))


def test_a_leaking_member_of_an_exception_group_is_replaced() -> None:
    group = ExceptionGroup("two failed", [ValueError("clean"), RuntimeError(SECRET)])
    top = RuntimeError("top")
    top.__cause__ = group
    redact_exception(top)
    cleaned = top.__cause__
    assert isinstance(cleaned, ExceptionGroup)
    assert isinstance(cleaned.exceptions[1], RedactedError)
    assert str(cleaned.exceptions[0]) == "clean"
    assert TAIL not in "".join(traceback.format_exception(top))
