"""The names users give that stores write into keys, columns and packed fields.

Queue names, agent names, a lease owner's host and nonce, and a backend's
``session_id`` / ``user_id`` end up where not every text survives:

* Redis joins a queue and an agent name with ``\\x1f`` into one claim key, and
  packs a lease owner into a ``\\x1f``-separated argument its scripts take
  apart (an owner holding ``\\x1f`` had every append refused);
* PostgreSQL ``TEXT`` cannot hold NUL (the write failed as if the store were
  down), and an index row holds at most ~2,700 bytes (a 9,000-character queue
  was stored, then made every claim that met it fail, for every queue);
* UTF-8, which every store writes, cannot encode a lone surrogate;
* owner ids are read back as ``host:pid:nonce``, split from the right.

So they are checked where the user gives them (`Agent`, ``submit(queue=...)``,
`Worker`, `Backend`, `LeaseOwner`), before anything is stored. What was
stored before these checks is read as it is: they never run on stored data.

A run id the caller chooses meets the same rules, but only when a *new* run is
stored under it (`check_new_run_id`: starting or submitting a task whose run
does not exist, a fork's or an import's new id). Looking a run up by id
(``Task(run_id=...)`` of a stored run, continue, get, wait, cancel, fork's
source) checks only what no store could ever have held (`task.check_run_id`),
so a run stored before under an id now refused is found by it as before.
"""

from __future__ import annotations

import re
from typing import Final

from durable_agent.errors import ConfigurationError

__all__ = ["LONGEST_LABEL", "LONGEST_NAME", "LONGEST_RUN_ID", "check_name", "check_new_run_id"]

LONGEST_NAME: Final = 200
"""Characters of a queue or agent name at most (800 UTF-8 bytes: far under any index row)."""
LONGEST_LABEL: Final = 500
"""Characters of a session or user id at most (2,000 UTF-8 bytes, under PostgreSQL's
2,704-byte index row with the creation time and run id beside it)."""
LONGEST_RUN_ID: Final = 128
"""Characters of a new run's id at most (512 UTF-8 bytes: with the longest session id and the
creation time, PostgreSQL's ``(session_id, created_at, run_id)`` index row stays under 2,704)."""

_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Control characters (Unicode category Cc) and lone surrogates (Cs)."""

ALLOWED: Final = (
    "any printable text: no control characters (U+0000-U+001F, U+007F-U+009F: NUL, tab, "
    "line breaks, the \\x1f that stores use as a separator) and no lone surrogates"
)


def check_name(
    value: object,
    where: str,
    *,
    longest: int = LONGEST_NAME,
    forbid: str = "",
    kind: str = "a name",
) -> str:
    """Return ``value`` if it is a name every store keeps intact; else `ConfigurationError`.

    ``where`` names the argument (``"submit(queue=...)"``); ``forbid`` adds
    characters this kind of name may not hold; ``kind`` says what it is in the
    message (``"a name may hold ..."``).
    """
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where} must be a non-empty str, got {value!r}")
    found = _FORBIDDEN.search(value)
    at = next((i for i, c in enumerate(value) if c in forbid), None) if forbid else None
    if found is not None and (at is None or found.start() < at):
        at = found.start()
    if at is not None:
        also = f", nor {' or '.join(repr(c) for c in forbid)}" if forbid else ""
        # repr() escapes what is refused, so the message itself is printable and storable.
        raise ConfigurationError(
            f"{where}: {value!r} holds {value[at]!r} at position {at}, which a store could "
            f"not keep intact; {kind} may hold {ALLOWED}{also}"
        )
    if len(value) > longest:
        raise ConfigurationError(
            f"{where}: {value[:40]!r}... is {len(value)} characters long; {kind} may hold "
            f"at most {longest}"
        )
    return value


def check_new_run_id(run_id: object, where: str) -> str:
    """Return ``run_id`` if a new run may be stored under it; else `ConfigurationError`.

    Called only where a run is about to be created, never on a lookup: a run
    stored under an id refused here (before this check existed) stays
    reachable by it. ``where`` names the argument (``"Task(run_id=...)"``).
    """
    if isinstance(run_id, str) and run_id and not run_id.strip():
        raise ConfigurationError(f"{where} must be a non-empty str, got {run_id!r}")
    return check_name(run_id, where, longest=LONGEST_RUN_ID, kind="a new run's id")
