"""Secrets never become stored data or exception text: the one redaction step.

Every text that comes from a provider, an SDK or an exception passes through
`redact` before it is stored (`ErrorInfo.from_exception`, the adapters' error
messages) or shown (the exception a run raises, and its chain, through
`redact_exception`). It knows the values marked secret with `mark_secret`:
the model adapters mark their API key and every header value they were given
when they are built; users mark anything else.

Each secret is removed in every form text can carry it: as it is, with
surrounding whitespace (the core is matched), ``repr``/``ascii`` escaped, JSON
escaped (``\\n``, ``\\u00e9``, ``\\/``), as the body of a bytes repr
(``b'...'``), percent-encoded (either hex case, ``+`` for a space), HTML
escaped, and one escaping nested in another (the repr of a JSON body). Any
``Bearer <token>`` or ``Basic <credentials>`` is redacted too, known or not.

The short-value rule: a value shorter than `MIN_SECRET_LENGTH` (8) characters
once stripped is never redacted. It cannot be told apart from ordinary text
(a header ``x-shard: 1`` would blank out every digit of every message) and is
too short to be a credential: a local server's ``api_key="test"`` stays
readable.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable

from durable_agent.errors import ConfigurationError, RedactedError

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "mark_secret",
    "redact",
    "redact_exception",
]

MIN_SECRET_LENGTH = 8
"""Values shorter than this (after stripping whitespace) are never redacted."""

REDACTED = "[redacted]"
"""What a secret is replaced with."""

_CREDENTIAL = re.compile(r"\b(Bearer|Basic)\s+(?=[A-Za-z._~-]*[0-9+/])[A-Za-z0-9._~+/-]{8,}=*")
"""An HTTP credential, known or not; a digit, ``+`` or ``/`` in it keeps prose such as
"Basic information" readable."""

_lock = threading.Lock()
_secrets: set[str] = set()
_forms: tuple[str, ...] = ()
"""Every form of every secret, longest first (so a longer form is replaced whole)."""


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


_ESCAPES: tuple[Callable[[str], str], ...] = (
    lambda s: repr(s)[1:-1],
    lambda s: ascii(s)[1:-1],
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    lambda s: repr(s.encode("utf-8", "surrogatepass"))[2:-1],
    lambda s: urllib.parse.quote(s, safe=""),
    lambda s: _lower_hex(urllib.parse.quote(s, safe="")),
    lambda s: urllib.parse.quote(s),
    lambda s: urllib.parse.quote_plus(s, safe=""),
    lambda s: _html_escape(s),
)
"""The ways text escapes a value; applied twice, for one escaping inside another."""


def _html_escape(text: str) -> str:
    # Imported here: `html` loads its 2,000-entry entity table, which only
    # marking a secret needs, not `import durable_agent`.
    import html

    return html.escape(text)


def _forms_of(secret: str) -> set[str]:
    forms = {secret}
    for _depth in range(2):
        forms |= {escape(form) for form in forms for escape in _ESCAPES}
    return forms


def mark_secret(*values: str) -> bool:
    """Never store or show these values: `redact` removes them from then on, in this process.

    Surrounding whitespace is ignored (the stripped value is what is matched,
    in every escaped form). A value shorter than `MIN_SECRET_LENGTH` characters
    after stripping is not redacted (it would blank out ordinary text); the
    result is False when any value was left out for that reason.

    Raises `ConfigurationError` for a value that is not a `str`.
    """
    kept = True
    cores: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigurationError(
                f"mark_secret takes str values, got a {type(value).__name__}"
            )
        core = value.strip()
        if len(core) < MIN_SECRET_LENGTH:
            kept = False
        else:
            cores.append(core)
    _add(cores)
    return kept


def _add(cores: Iterable[str]) -> None:
    global _forms
    with _lock:
        new = [c for c in cores if c not in _secrets]
        if not new:
            return
        forms = set(_forms)
        for core in new:
            _secrets.add(core)
            forms |= {f for f in _forms_of(core) if len(f) >= MIN_SECRET_LENGTH}
        _forms = tuple(sorted(forms, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every marked secret, in every form, and any HTTP credential replaced.

    Redact before shortening a text: a cut secret would no longer match.
    """
    for form in _forms:  # a snapshot: `_add` replaces the tuple, never mutates it
        if form in text:
            text = text.replace(form, REDACTED)
    return _CREDENTIAL.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def _leaks(exc: BaseException) -> bool:
    """Whether any text of ``exc`` alone (not its chain) still holds a secret."""
    texts: list[str] = []
    # A group's repr shows its members, which are checked one by one instead.
    renders = (str,) if isinstance(exc, BaseExceptionGroup) else (str, repr)
    for render in renders:
        try:
            texts.append(render(exc))
        except Exception:  # a broken __str__ cannot be checked: treat it as a leak
            return True
    texts.extend(str(note) for note in getattr(exc, "__notes__", None) or ())
    return any(redact(text) != text for text in texts)


def _stand_in(exc: BaseException) -> RedactedError:
    kind = type(exc)
    try:
        said = redact(str(exc))
    except Exception:
        said = "its text could not be read"
    stand_in = RedactedError(f"{kind.__module__}.{kind.__qualname__}", said)
    notes = getattr(exc, "__notes__", None)
    if notes:
        stand_in.__notes__ = [redact(str(note)) for note in notes]
    return stand_in.with_traceback(exc.__traceback__)


def _clean(exc: BaseException, done: dict[int, BaseException]) -> BaseException:
    """``exc``, or its stand-in when its own text leaks; its chain cleaned (in place)."""
    seen = done.get(id(exc))
    if seen is not None:
        return seen
    out: BaseException = _stand_in(exc) if _leaks(exc) else exc
    done[id(exc)] = out
    if out is exc and isinstance(exc, BaseExceptionGroup):
        members = [_clean(member, done) for member in exc.exceptions]
        if any(new is not old for new, old in zip(members, exc.exceptions, strict=True)):
            group = exc.derive(members)
            group.__traceback__ = exc.__traceback__
            if hasattr(exc, "__notes__"):
                group.__notes__ = list(exc.__notes__)
            out = done[id(exc)] = group
    cause, context = exc.__cause__, exc.__context__
    suppress = exc.__suppress_context__
    new_cause = _clean(cause, done) if cause is not None else None
    new_context = _clean(context, done) if context is not None else None
    if out is not exc or new_cause is not cause:
        out.__cause__ = new_cause  # this setter also sets __suppress_context__
    if out is not exc or new_context is not context:
        out.__context__ = new_context
    out.__suppress_context__ = suppress
    return out


def redact_exception(exc: BaseException) -> None:
    """Make ``exc`` and its whole chain safe to print, in place.

    Every exception reachable through ``__cause__``, ``__context__`` (and the
    members of an exception group) whose text (``str``, ``repr``, notes)
    holds a marked secret is replaced in the chain by a `RedactedError`: the
    original's qualified type name and its redacted text, with the original's
    traceback, cause and context, so a printed traceback still shows where it
    came from. ``exc`` itself cannot be replaced: when its own text leaks, its
    ``args`` and notes are redacted in place, which is enough for every
    exception whose text comes from its arguments (all of durable-agent's do).
    """
    done: dict[int, BaseException] = {id(exc): exc}
    if _leaks(exc):
        exc.args = tuple(redact(a) if isinstance(a, str) else redact(repr(a)) for a in exc.args)
        notes = getattr(exc, "__notes__", None)
        if notes:
            exc.__notes__ = [redact(str(note)) for note in notes]
    cause, context = exc.__cause__, exc.__context__
    suppress = exc.__suppress_context__
    if cause is not None:
        new = _clean(cause, done)
        if new is not cause:
            exc.__cause__ = new
    if context is not None:
        new = _clean(context, done)
        if new is not context:
            exc.__context__ = new
    exc.__suppress_context__ = suppress
