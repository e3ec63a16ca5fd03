"""CI runs the conformance suite on examples/custom_backend (MariaDB) from here."""

from __future__ import annotations

from examples.custom_backend.test_mariadb_backend import TestMariaDbBackend

__all__ = ["TestMariaDbBackend"]
