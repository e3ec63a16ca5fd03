"""What a store can hold: the decoder's limits, checked before anything is written.

`records.encode_event` refuses, with `UnstorableValueError` naming the value's path
and the reason, every value `records.decode_event` could not read back equal:

- a JSON value (tool arguments, a decision's value or inputs, an output schema)
  nested more than `MAX_DEPTH` levels;
- NaN or infinity (the serializer would write ``null`` or a non-standard token);
- text with a lone surrogate (UTF-8 cannot encode it);
- anything that is not JSON (a set, an object, a key that is not a str).

Measured with pydantic-core 2.50 (pydantic 2.14): its JSON parser refuses a
document nested more than 200 levels (``recursion limit exceeded``) on every
backend's read path (SQLite, Redis, JSON files and memory all hand stored text to
``validate_json``); a record puts at most 4 levels of its own around a JSON value,
so 64 leaves a wide margin, and pydantic's Python-side validation (refuses past
~254 levels) is never the limit either.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError, ValidatorFunctionWrapHandler
from pydantic_core import PydanticSerializationError, to_json, to_jsonable_python

from durable_agent.errors import UnstorableValueError

if TYPE_CHECKING:
    from durable_agent.records import AssistantMessage

__all__ = [
    "MAX_DEPTH",
    "check_answer",
    "check_record",
    "check_text",
    "check_value",
    "encode_tool_result",
    "escape_surrogates",
    "keep_too_deep",
    "nothing_to_check",
]

MAX_DEPTH: Final = 64
"""How deep a stored JSON value may nest; the value itself (an arguments object) is level 1."""

_SHOWN_SEGMENTS: Final = 8
"""A longer path is shortened in messages: a 64-level path helps nobody."""


class _Refused(Exception):
    """Internal: raised at the refused value; each frame adds its segment on the way out."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.segments: list[str] = []


def escape_surrogates(text: str) -> str:
    """``text`` with each lone surrogate written as ``\\udcxx``, so UTF-8 can encode it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def check_text(text: str, path: str) -> None:
    """Raise `UnstorableValueError` if ``text`` holds a lone surrogate."""
    try:
        _text(text)
    except _Refused as refused:
        raise UnstorableValueError(path, refused.reason) from None


def check_value(value: object, path: str) -> None:
    """Raise `UnstorableValueError` if the JSON value ``value`` could not be read back."""
    try:
        _value(value, 0, True)
    except _Refused as refused:
        raise UnstorableValueError(_path(path, refused.segments), refused.reason) from None


def check_record(record: BaseModel, *, text: bool, skip: str | None = None) -> None:
    """Raise `UnstorableValueError` for the first value of ``record`` a store could not hold.

    ``text=False`` leaves the surrogate check to the serializer (it fails on
    one at no extra cost); a caller that meets that failure checks again with
    ``text=True`` to learn where the bad text is. ``skip`` names a field
    already checked (an answer, by `check_answer`).
    """
    try:
        _model(record, text, skip)
    except _Refused as refused:
        raise UnstorableValueError(_path("", refused.segments), refused.reason) from None


def check_answer(message: AssistantMessage) -> None:
    """Raise `UnstorableValueError` if a model's answer could not be stored and read back.

    The message names the tool call (id and tool) and the value inside its
    arguments, in words a model can act on. Two calls with one id are refused
    too: each result is matched to its call by id.
    """
    if message.content is not None and not message.content.isascii():
        check_text(message.content, "the answer's text")
    seen: dict[str, int] = {}
    for index, call in enumerate(message.tool_calls):
        if not (call.id.isascii() and call.name.isascii()):
            check_text(call.id, f"tool_calls[{index}].id")
            check_text(call.name, f"tool_calls[{index}].name")
        if call.id in seen:
            raise UnstorableValueError(
                f"tool_calls[{index}].id",
                f"call id {call.id!r} is also the id of tool_calls[{seen[call.id]}]; "
                "each tool call of one answer needs its own id",
            )
        seen[call.id] = index
        try:
            _value(call.arguments, 0, True)
        except _Refused as refused:
            where = f"arguments of tool call {call.id!r} ({call.name})"
            raise UnstorableValueError(_path(where, refused.segments), refused.reason) from None


def encode_tool_result(value: object) -> str:
    """A tool's return value as the JSON text the model is shown and the log stores.

    Anything pydantic can serialize (models, dataclasses, datetimes) is
    accepted; NaN, infinity and lone surrogates raise `UnstorableValueError`
    naming where in the result they are, instead of writing non-standard JSON.
    """
    try:
        text = to_json(value).decode()
    except PydanticSerializationError as exc:
        check_value(to_jsonable_python(value), "the tool's result")
        raise UnstorableValueError("the tool's result", escape_surrogates(str(exc))) from exc
    # Only text that holds one of JSON's missing constants is parsed again to
    # find where (the word may as well be inside a string).
    if "NaN" in text or "Infinity" in text:
        check_value(json.loads(text), "the tool's result")
    return text


def keep_too_deep(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a JSON field, but keep a value too deep for pydantic as it is.

    pydantic refuses a Python value nested past ~254 levels while a record is
    built, which would make a model's answer fail inside its adapter. Kept,
    the encoder refuses it by name (`MAX_DEPTH`) and the engine can tell the
    model what to fix.
    """
    try:
        return handler(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        deep = any(e["type"] == "recursion_depth_exceeded" for e in errors)
        if deep and isinstance(value, dict | list):
            return value
        raise


def _path(base: str, segments: list[str]) -> str:
    parts = segments[::-1]
    if len(parts) > _SHOWN_SEGMENTS:
        parts = [*parts[: _SHOWN_SEGMENTS - 2], "…", *parts[-2:]]
    return (base + "".join(parts)).lstrip(".")


def _key(key: str) -> str:
    return f".{key}" if key.isidentifier() else f"[{escape_surrogates(key)!r}]"


def _text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Refused(
            f"text holds a lone surrogate {text[exc.start]!r} at position {exc.start}, which "
            "is not valid Unicode and cannot be stored (decode bytes with errors='replace'; "
            "for a file name, os.fsencode(name).decode(errors='replace'))"
        ) from None


def _number(value: float) -> None:
    if not math.isfinite(value):
        shown = "NaN" if math.isnan(value) else ("-" if value < 0 else "") + "Infinity"
        raise _Refused(
            f"{shown} is not a JSON number: NaN and infinity cannot be stored "
            "(use null, a string, or a finite number)"
        )


_SAFE: Final = (int, bool, datetime, int | None, bool | None)
"""Field types whose values any store holds: a record walk skips them."""

# How a record walk looks at a field, from its annotation: plain text (only
# non-ASCII text needs a look), a float (finite?), a record of its own (walked
# without asking what it is), or anything else (the general JSON walk).
_TEXT: Final = 1
_FLOAT: Final = 2
_RECORD: Final = 3
_OTHER: Final = 4

_Plan = tuple[tuple[str, int], ...]

_PLANS: dict[type[BaseModel], tuple[_Plan, _Plan]] = {}
"""Per record class, the fields worth a look, each with how to look at it: with text, and
without (the serializer refuses a lone surrogate itself, `check_record`)."""


def _plan(cls: type[BaseModel], text: bool) -> _Plan:
    plans = _PLANS.get(cls)
    if plans is None:
        fields: list[tuple[str, int, type[BaseModel] | None]] = []
        for name, info in cls.model_fields.items():
            kind = info.annotation
            plain = isinstance(kind, type) and issubclass(kind, Enum)
            if kind in _SAFE or plain or get_origin(kind) is Literal:
                continue
            look = _look(kind)
            fields.append((name, look, _record_class(kind) if look == _RECORD else None))
        _BUILDING.add(cls)
        try:
            # A record field whose own class has nothing to look at is left out
            # of the plan (a `Usage`, a `LeaseTaken` without text): its values
            # were validated as that class, and are serialized as that class.
            plans = _PLANS[cls] = (
                tuple((n, look) for n, look, inner in fields if _worth_a_look(inner, True)),
                tuple(
                    (n, look) for n, look, inner in fields
                    if look != _TEXT and _worth_a_look(inner, False)
                ),
            )
        finally:
            _BUILDING.discard(cls)
    return plans[0] if text else plans[1]


_BUILDING: set[type[BaseModel]] = set()
"""Record classes whose plan is being built (a record may hold its own class)."""


def _worth_a_look(inner: type[BaseModel] | None, text: bool) -> bool:
    return inner is None or inner in _BUILDING or bool(_plan(inner, text))


def _record_class(kind: object) -> type[BaseModel]:
    options = [k for k in get_args(kind) if k is not type(None)] if get_origin(kind) else [kind]
    record = options[0]
    assert isinstance(record, type)
    assert issubclass(record, BaseModel)
    return record


def nothing_to_check(cls: type[BaseModel]) -> bool:
    """Whether no field of ``cls`` can hold a value a store could not keep, text aside.

    Such a record needs no walk before it is serialized (`check_record` with
    ``text=False`` would look at nothing): its text is checked by the serializer.
    """
    return not _plan(cls, False)


def _look(kind: object) -> int:
    if kind in (str, str | None):
        return _TEXT
    if kind in (float, float | None):
        return _FLOAT
    options = [k for k in get_args(kind) if k is not type(None)] if get_origin(kind) else [kind]
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], BaseModel):
        return _RECORD
    return _OTHER


def _model(record: BaseModel, text: bool, skip: str | None = None) -> None:
    # Only the fields that can hold something unstorable are looked at (this
    # walk runs on every append), and plain text only when it is not ASCII.
    # The exact-type tests are fast paths; anything else (a value that skipped
    # validation) takes the general walk.
    values = record.__dict__
    for name, look in _plan(type(record), text):
        value = values[name]
        if value is None:
            continue
        if look == _TEXT:
            if text and not value.isascii():
                _field(value, text, name)
        elif look == _FLOAT and type(value) is float:
            if not math.isfinite(value):
                _field(value, text, name)
        elif name == skip:
            continue
        elif look == _RECORD and (plans := _PLANS.get(type(value))) is not None:
            if not plans[0 if text else 1]:
                continue  # nothing in it to look at (a `Usage`; a message, text aside)
            try:
                _model(value, text)
            except _Refused as refused:
                refused.segments.append(f".{name}")
                raise
        else:
            _field(value, text, name)


def _field(value: object, text: bool, name: str) -> None:
    try:
        _member_of_record(value, text)
    except _Refused as refused:
        refused.segments.append(f".{name}")
        raise


def _member_of_record(value: object, text: bool) -> None:
    """A field of a record: models and tuples are the record's own shape, not JSON values."""
    if isinstance(value, BaseModel):
        _model(value, text)
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            try:
                _member_of_record(item, text)
            except _Refused as refused:
                refused.segments.append(f"[{index}]")
                raise
    else:
        _value(value, 0, text)


def _value(value: object, depth: int, text: bool) -> None:
    """A JSON value ``depth`` containers deep (0: a record's field itself)."""
    if isinstance(value, str):  # a str subclass too (an enum's value)
        if text and not value.isascii():
            _text(value)
    elif value is None or isinstance(value, int):  # a bool is an int
        pass
    elif isinstance(value, float):
        _number(value)
    elif type(value) is dict or type(value) is list:
        if depth >= MAX_DEPTH:
            raise _Refused(
                f"nested more than {MAX_DEPTH} levels deep; a stored JSON value may nest at "
                f"most {MAX_DEPTH} levels (flatten it, or pass it as a JSON string)"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                _member(key, item, depth, text)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                try:
                    _value(item, depth + 1, text)
                except _Refused as refused:
                    refused.segments.append(f"[{index}]")
                    raise
    elif depth == 0 and not isinstance(value, list | dict | set | frozenset | bytes):
        pass  # a record's own typed field (a datetime, an enum): pydantic writes it
    else:
        raise _Refused(f"a {type(value).__name__} is not a JSON value")


def _member(key: object, item: object, depth: int, text: bool) -> None:
    if not isinstance(key, str):
        raise _Refused(f"a {type(key).__name__} key is not a JSON object key (keys are str)")
    try:
        if text:
            _text(key)
        _value(item, depth + 1, text)
    except _Refused as refused:
        refused.segments.append(_key(key))
        raise
