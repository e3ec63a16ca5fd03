"""A custom durable-agent backend over PostgreSQL, with its conformance tests (docs/backends.md)."""
