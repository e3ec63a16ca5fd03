"""Human decisions: the requirements a WAITING run lists, and how they are decided.

A run waits when the model calls a tool declared ``requires_confirmation``,
``external_execution`` or ``requires_user_input``, and when a tool declared
``idempotent=False`` may have run before a crash (an *in-doubt* call). Each
waiting call is one `Requirement`; decide it with a method
(`Requirement.confirm`, `reject`, `set_result`, `provide`) and pass the objects
back, or pass plain data by requirement id (``approvals``, ``results``,
``inputs``) from any process.

| kind         | confirm / approvals | set_result / results  | provide / inputs   |
|--------------|---------------------|-----------------------|--------------------|
| confirmation | run the call        | -                     | -                  |
| external     | -                   | the call's result     | -                  |
| user_input   | -                   | -                     | the missing fields |
| in_doubt     | run it again        | skip: use this result | -                  |

``reject(reason)`` (``approvals={id: False}`` or ``{id: "reason"}``) fits every
kind: the model receives the rejection as the call's error result; for an
in-doubt call it means "fail it". An in-doubt call whose tool was removed,
renamed or changed since it started waits too, whatever its ``idempotent``
setting; `Requirement.detail` says what changed. Running it again
("confirm") runs the tool registered under its name now (none, for a removed
tool: the model gets an "unknown tool" error result).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from durable_agent.errors import DecisionError
from durable_agent.records import DecisionAction, JSONValue, RequirementKind, RequirementRecord

__all__ = ["Decision", "DecisionRequest", "Requirement", "collect_decisions"]

_ALLOWED: dict[RequirementKind, frozenset[DecisionAction]] = {
    "confirmation": frozenset({"confirm", "reject"}),
    "external": frozenset({"result", "reject"}),
    "user_input": frozenset({"input", "reject"}),
    "in_doubt": frozenset({"confirm", "result", "reject"}),
}


@dataclass(frozen=True, slots=True)
class Decision:
    """What was decided about one requirement."""

    action: DecisionAction
    reason: str | None = None
    value: JSONValue = None
    inputs: Mapping[str, JSONValue] = field(default_factory=dict)


class Requirement:
    """One tool call waiting for a human, with the methods that decide it."""

    def __init__(self, record: RequirementRecord) -> None:
        self.record = record
        self.decision: Decision | None = None

    @property
    def id(self) -> str:
        """Unique within the run; the key for ``approvals``/``results``/``inputs``."""
        return self.record.id

    @property
    def kind(self) -> RequirementKind:
        """confirmation, external, user_input or in_doubt."""
        return self.record.kind

    @property
    def tool_name(self) -> str:
        """The tool the model called."""
        return self.record.tool_name

    @property
    def arguments(self) -> dict[str, JSONValue]:
        """The arguments the model gave."""
        return dict(self.record.arguments)

    @property
    def fields(self) -> tuple[str, ...]:
        """The parameters a human must provide (user_input)."""
        return self.record.fields

    @property
    def detail(self) -> str | None:
        """Why an in-doubt call waits, when its tool changed or reconcile could not tell."""
        return self.record.detail

    @property
    def call_id(self) -> str:
        """The tool call this requirement is about."""
        return self.record.call_id

    def confirm(self) -> Requirement:
        """Approve the call (for an in-doubt call: run it again)."""
        self.decision = Decision("confirm")
        return self

    def reject(self, reason: str | None = None) -> Requirement:
        """Refuse the call; the model gets ``reason`` as the call's error result."""
        self.decision = Decision("reject", reason=reason)
        return self

    def set_result(self, value: JSONValue) -> Requirement:
        """Supply the call's result (external), or skip an in-doubt call with it."""
        self.decision = Decision("result", value=value)
        return self

    def provide(self, **fields: JSONValue) -> Requirement:
        """Give the fields a user_input call needs."""
        self.decision = Decision("input", inputs=dict(fields))
        return self

    def __repr__(self) -> str:
        return (
            f"Requirement(id={self.id!r}, kind={self.kind!r}, tool={self.tool_name!r}, "
            f"arguments={self.record.arguments!r})"
        )


def _approval(run_id: str, rid: str, value: object) -> Decision:
    if value is True:
        return Decision("confirm")
    if value is False or value is None:
        return Decision("reject")
    if isinstance(value, str):
        return Decision("reject", reason=value)
    raise DecisionError(
        f"run {run_id!r}: approvals[{rid!r}] must be True, False or a rejection reason, "
        f"got {value!r}"
    )


def collect_decisions(
    run_id: str,
    open_requirements: Mapping[str, RequirementRecord],
    *,
    requirements: Iterable[Requirement] = (),
    approvals: Mapping[str, bool | str] | None = None,
    results: Mapping[str, JSONValue] | None = None,
    inputs: Mapping[str, Mapping[str, JSONValue]] | None = None,
) -> dict[str, Decision]:
    """Check every decision against the run's open requirements and return them by id.

    Raises `DecisionError` (and records nothing) for an unknown or already
    decided id, a decision twice for one id, one that does not fit the kind,
    or user input that misses a field.
    """
    decided: dict[str, Decision] = {}

    def add(rid: str, decision: Decision) -> None:
        if rid in decided:
            raise DecisionError(f"run {run_id!r}: requirement {rid!r} is decided twice")
        record = open_requirements.get(rid)
        if record is None:
            known = ", ".join(sorted(open_requirements)) or "none"
            raise DecisionError(
                f"run {run_id!r} has no open requirement {rid!r} (unknown, or already "
                f"decided); the open ones are: {known}"
            )
        if decision.action not in _ALLOWED[record.kind]:
            allowed = ", ".join(sorted(_ALLOWED[record.kind]))
            raise DecisionError(
                f"run {run_id!r}: requirement {rid!r} ({record.kind} for tool "
                f"{record.tool_name!r}) cannot be decided with {decision.action!r}; "
                f"use one of: {allowed}"
            )
        if decision.action == "input":
            missing = [f for f in record.fields if f not in decision.inputs]
            if missing:
                raise DecisionError(
                    f"run {run_id!r}: requirement {rid!r} needs the fields {missing} for "
                    f"tool {record.tool_name!r}"
                )
        decided[rid] = decision

    for requirement in requirements:
        if not isinstance(requirement, Requirement):
            raise DecisionError(
                f"requirements=[...] takes Requirement objects, got {requirement!r}"
            )
        if requirement.decision is None:
            continue
        add(requirement.id, requirement.decision)
    for rid, approval in (approvals or {}).items():
        add(rid, _approval(run_id, rid, approval))
    for rid, value in (results or {}).items():
        add(rid, Decision("result", value=value))
    for rid, fields in (inputs or {}).items():
        if not isinstance(fields, Mapping):
            raise DecisionError(f"run {run_id!r}: inputs[{rid!r}] must be a dict of fields")
        add(rid, Decision("input", inputs=dict(fields)))
    return decided


@dataclass(frozen=True)
class DecisionRequest:
    """The decisions one continue call carries, as given: checked against the run each time.

    Checked once before anything is taken (bad input stores nothing) and again
    under the lease, since another process may have decided meanwhile.
    """

    requirements: tuple[Requirement, ...] = ()
    approvals: Mapping[str, bool | str] | None = None
    results: Mapping[str, JSONValue] | None = None
    inputs: Mapping[str, Mapping[str, JSONValue]] | None = None

    def __bool__(self) -> bool:
        return bool(
            any(r.decision is not None for r in self.requirements)
            or self.approvals
            or self.results
            or self.inputs
        )

    def check(
        self, run_id: str, open_requirements: Mapping[str, RequirementRecord]
    ) -> dict[str, Decision]:
        """The decisions by requirement id; `DecisionError` when one does not fit."""
        return collect_decisions(
            run_id,
            open_requirements,
            requirements=self.requirements,
            approvals=self.approvals,
            results=self.results,
            inputs=self.inputs,
        )
