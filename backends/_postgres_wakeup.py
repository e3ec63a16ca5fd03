"""`PostgresBackend`'s wake-up NOTIFY: never the reason a durable write fails.

PostgreSQL keeps every notification in one queue per server (8 GB by
default) until each session that LISTENs has read it. A listener that stops
reading (a frozen or stopped worker, a ``psql`` left in ``LISTEN``, a session
holding a transaction open) holds the queue back, and once it is full every
NOTIFY fails at COMMIT with ``too many notifications in the NOTIFY queue``:
the whole transaction is rolled back. The wake-up rides in the group-commit
transaction (one per batch, coalesced), so a full queue would make every
create, every append that brings a run to rest, every cancellation and
release fail, though nothing is wrong with the data.

So the wake-up is guarded and best effort, as the rest of the design already
treats it (notifications are lost on reconnect; every wait is a poll with
jitter behind it):

* The statement reads ``pg_notification_queue_usage()`` and notifies only
  below `SKIP_AT` of the queue; above it the batch commits without a wake-up
  and waiters find the change by their poll. Between the check and the commit
  the queue would have to take the last tenth of 8 GB, which wake-ups of a
  few dozen bytes never do.
* If the commit fails on a full queue all the same (another application
  filled it), the writer sends the write again without the wake-up:
  PostgreSQL refuses the NOTIFY before the commit record, so nothing of the
  first attempt was stored and the retry is the same compare-and-set
  (`is_queue_full`, `durable_agent.backends._postgres_writer`).
* Each notifying commit reports the usage it read; from `WARN_AT` on,
  `QueueWatch` logs a warning (at most once a minute per writer) that says
  how to find the listener that holds the queue back. The operator's health
  check is the same query: ``SELECT pg_notification_queue_usage()``
  (docs/backends.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import psycopg
from psycopg import sql

__all__ = ["SKIP_AT", "USAGE", "WARN_AT", "QueueWatch", "is_queue_full", "statement"]

WARN_AT: Final = 0.5
"""The queue's usage (0 to 1) from which every notifying commit's writer logs a warning."""

SKIP_AT: Final = 0.9
"""The queue's usage from which commits send no wake-up (waiters poll)."""

USAGE: str = "pg_catalog.pg_notification_queue_usage()"
"""The SQL that reads the queue's usage. Tests replace it (before the store opens) with a
function of their schema, the only way to make a PostgreSQL 15 queue look full: its size
(``max_notify_queue_pages`` from PostgreSQL 17 on) cannot be changed at run time, and
filling 8 GB is not a test."""

_QUEUE_FULL: Final = "54000"  # program_limit_exceeded, what a full NOTIFY queue raises

_LOG: Final = logging.getLogger("durable_agent")


def statement(channel: str) -> str:
    """The wake-up added to a batch: one row, the queue's usage; a NOTIFY below `SKIP_AT`."""
    return (
        sql.SQL("SELECT u, CASE WHEN u < {} THEN pg_notify({}, '') END FROM {} AS u")
        .format(sql.Literal(SKIP_AT), sql.Literal(channel), sql.SQL(USAGE))
        .as_string(None)
    )


def is_queue_full(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a NOTIFY because its queue is full."""
    return isinstance(exc, psycopg.Error) and getattr(exc, "sqlstate", None) == _QUEUE_FULL


class QueueWatch:
    """Warns, at most once per `interval` seconds, while the queue is `WARN_AT` full or more."""

    def __init__(
        self,
        where: str,
        *,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = where
        self.interval = interval
        self._clock = clock
        self._warned_at: float | None = None
        self.usage: float | None = None
        """The usage the last notifying commit read (None before the first)."""

    def __call__(self, usage: float) -> None:
        """Note the ``usage`` a commit read; warn if it is high and no warning is recent."""
        self.usage = usage
        if usage < WARN_AT:
            return
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < self.interval:
            return
        self._warned_at = now
        skipped = (
            "wake-ups are skipped, workers find new runs by polling"
            if usage >= SKIP_AT
            else f"from {SKIP_AT:.0%} on, wake-ups are skipped and workers fall back on polling"
        )
        _LOG.warning(
            "PostgreSQL store %s: the server's NOTIFY queue is %.0f%% full; %s. A session "
            "that LISTENs but does not read holds it back (a frozen worker, a stopped "
            'follower, a transaction left open): the server log names its PID ("NOTIFY '
            'queue is ...%% full"); end that session, e.g. SELECT pg_terminate_backend(PID)',
            self.where,
            usage * 100,
            skipped,
        )
