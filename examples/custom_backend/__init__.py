"""A custom durable-agent backend over MariaDB, with its conformance tests (docs/backends.md)."""
