"""CI runs the conformance suite on examples/custom_backend (PostgreSQL) from here."""

from __future__ import annotations

from examples.custom_backend.test_postgres_backend import TestPostgresBackend

__all__ = ["TestPostgresBackend"]
