"""The upcaster chain and tool identity, without I/O."""

from __future__ import annotations

import json

import pytest

from durable_agent import SchemaVersionError, Tool
from durable_agent._upcast import EVENT_STEPS, HEADER_STEPS, upcast_event
from durable_agent.records import (
    SCHEMA_VERSION,
    CreatedEvent,
    ToolStartedEvent,
    decode_event,
    decode_header,
    encode_event,
)

V1_INTENT = (
    '{"schema_version":1,"seq":4,"state":"TOOL_EXEC","at":"2026-12-02T07:53:59.582040Z",'
    '"kind":"tool_started","call_id":"call_0_0","name":"charge","attempt":1}'
)
V1_CREATED = (
    '{"schema_version":1,"seq":1,"state":"PENDING","at":"2026-12-02T07:53:59.580103Z",'
    '"kind":"created","messages":[{"schema_version":1,"role":"user","content":"go"}]}'
)


def test_every_older_version_has_an_upcaster_step() -> None:
    assert set(EVENT_STEPS) == set(range(1, SCHEMA_VERSION))
    assert set(HEADER_STEPS) == set(range(1, SCHEMA_VERSION))


def test_a_version_1_intent_reads_as_the_current_version_with_no_identity() -> None:
    event = decode_event("r", 4, V1_INTENT)
    assert isinstance(event, ToolStartedEvent)
    assert event.schema_version == SCHEMA_VERSION
    assert (event.schema_hash, event.idempotent, event.agent_version) == (None, None, None)
    # What `migrate` stores reads back the same.
    assert decode_event("r", 4, encode_event(event)) == event


def test_a_version_1_run_start_records_no_tools() -> None:
    event = decode_event("r", 1, V1_CREATED)
    assert isinstance(event, CreatedEvent)
    assert event.tools is None


def test_upcasting_is_pure_and_leaves_current_records_alone() -> None:
    raw = json.loads(V1_INTENT)
    once = upcast_event(raw)
    assert raw["schema_version"] == 1  # the input is not changed
    assert upcast_event(once) == once


def test_a_record_newer_than_this_code_is_still_refused() -> None:
    newer = json.loads(V1_INTENT) | {"schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(SchemaVersionError):
        decode_event("r", 4, json.dumps(newer))
    header = {"run_id": "r", "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(SchemaVersionError):
        decode_header("r", json.dumps(header))


def test_a_version_1_header_reads_as_the_current_version() -> None:
    assert decode_header("r", '{"run_id":"r","schema_version":1}').schema_version == SCHEMA_VERSION


def charge(card: str, amount: int = 1) -> str:
    """Charge a card."""
    return card


def test_the_schema_hash_follows_the_parameters_not_the_name_or_docstring() -> None:
    base = Tool(charge)
    assert Tool(charge, name="charge_v2").schema_hash == base.schema_hash
    assert Tool(charge, description="Something else.").schema_hash == base.schema_hash

    def retyped(card: str, amount: float = 1) -> str:
        return card

    def renamed_param(card_number: str, amount: int = 1) -> str:
        return card_number

    assert Tool(retyped, name="charge").schema_hash != base.schema_hash
    assert Tool(renamed_param, name="charge").schema_hash != base.schema_hash
    assert Tool(charge, idempotent=False).signature().idempotent is False
