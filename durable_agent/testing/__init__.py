"""Helpers for testing agents and stores offline: crash injection, and later the
conformance suite and fake provider servers."""

from durable_agent.testing.crash import KillSwitchBackend

__all__ = ["KillSwitchBackend"]
