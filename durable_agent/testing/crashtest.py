"""`crashtest`: kill your own agent after every durable write and check what the resume did.

```python
from durable_agent.testing import crashtest

report = crashtest("myapp.agents:support", "Refund order 42")  # or the Agent object
assert report.ok, report.text()
```

It runs the agent once cleanly in a child process, counting its durable
writes (each `Backend.create_run` or `append`). Then, for each kill point k,
a new child does the task and SIGKILLs itself right after write k is durable
(`KillSwitchBackend`: an exact point, not a timer) and another new child
continues the run. Every child works on a scratch SQLite store of its own,
never the agent's ``db``, and writes each tool execution to a ledger file.

The report says, per kill point, which tool calls ran again after the crash
(the at-least-once window: the resume cannot know whether they had run),
which bodies really ran twice, which calls went in doubt (``idempotent=False``
tools: decided from the ledger, as a careful human would), and whether the
final answer matched the clean run's. A tool is **flagged** when it can run
again after a crash, never read ``ctx.idempotency_key`` and is neither pure by
inspection (its body calls nothing) nor named in ``pure=``: an outside effect
it has would then happen twice. `CrashReport.ok` is False on a mismatch or a
flagged tool (``durable-agent crashtest`` exits 1).

The model is the agent's own and is asked again at every kill point, so a
provider model must point at a local fake server unless ``allow_real_model``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from durable_agent.agent import Agent
from durable_agent.errors import ConfigurationError, DurableAgentError
from durable_agent.testing._crashtest_target import (
    check_model,
    load_agent,
    pure_by_inspection,
    spec_of,
)

__all__ = ["CrashReport", "CrashtestError", "KillPoint", "ToolFinding", "crashtest"]

_CHILD: Final = "durable_agent.testing._crashtest_child"
_IN_CHILD: Final = "DURABLE_AGENT_CRASHTEST_CHILD"
"""Set in every child: a module that calls crashtest when imported would otherwise recurse."""


class CrashtestError(DurableAgentError, RuntimeError):
    """The crash test could not run: the clean run did not finish, or a child failed."""


@dataclass(frozen=True, slots=True)
class KillPoint:
    """What happened when the run was killed right after durable write ``write``."""

    write: int
    carried: str
    """What that write stored, in words (``answer asks add + intent add``)."""
    state: str | None
    output: str | None
    matched: bool
    """The resumed run finished (DONE) with the clean run's answer."""
    ran_again: tuple[str, ...] = ()
    """``tool (call id)`` of calls the resume ran again: their intent predates the kill."""
    ran_twice: tuple[str, ...] = ()
    """Calls whose body really executed more than once (the ledger counts them)."""
    in_doubt: tuple[str, ...] = ()
    """Calls that made the run WAITING in doubt (``idempotent=False`` tools)."""
    model_repeated: int = 0
    """Model calls the resume made again (their intent was recorded, the answer lost)."""
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class ToolFinding:
    """One tool the task used, and whether a re-run after a crash is safe."""

    name: str
    idempotent: bool
    reads_key: bool
    pure: str | None
    """``"declared"`` (``pure=``), ``"by inspection"`` (its body calls nothing) or None."""
    ran_again_at: tuple[int, ...]
    flagged: bool
    verdict: str


@dataclass(frozen=True, slots=True)
class CrashReport:
    """The outcome of `crashtest`; ``ok`` when every answer matched and no tool is flagged."""

    agent: str
    task: str
    writes: int
    """Durable writes of the clean run (the possible kill points)."""
    answer: str | None
    kill_points: tuple[KillPoint, ...]
    tools: tuple[ToolFinding, ...]
    workdir: str | None = None
    """Where the scratch stores and ledgers were kept (``keep=``), else None."""
    flagged: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flagged", tuple(t.name for t in self.tools if t.flagged))

    @property
    def ok(self) -> bool:
        """Every kill point matched the clean run and no tool is flagged."""
        return all(k.matched for k in self.kill_points) and not self.flagged

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON data (what ``--json`` prints)."""
        return {**asdict(self), "ok": self.ok}

    def text(self) -> str:
        """The report as the command prints it: a row per kill point, a line per tool."""
        lines = [
            f"crashtest of {self.agent} on {self.task!r}",
            f"clean run: DONE in {self.writes} durable writes; answer: {self.answer!r}",
            "",
            f"{'KILLED AFTER WRITE':<44} {'RESUMED':<9} {'RAN AGAIN':<24} {'IN DOUBT':<18} "
            "ANSWER",
        ]
        for k in self.kill_points:
            answer = "matched" if k.matched else f"MISMATCH: {k.problem}"
            lines.append(
                f"{k.write:>3}  {_cut(k.carried, 38):<39} {k.state or '-':<9} "
                f"{_cut(', '.join(k.ran_again) or '-', 23):<24} "
                f"{_cut(', '.join(k.in_doubt) or '-', 17):<18} {answer}"
            )
            if k.ran_twice:
                lines.append(f"     executed twice: {', '.join(k.ran_twice)}")
        lines += ["", "tools:"]
        width = max((len(t.name) for t in self.tools), default=4)
        lines += [f"  {t.name:<{width}}  {t.verdict}" for t in self.tools]
        if not self.tools:
            lines.append("  (the task called none)")
        bad = [k.write for k in self.kill_points if not k.matched]
        if self.ok:
            lines.append(f"\nPASSED: {len(self.kill_points)} kill points, every answer matched, "
                         "no tool flagged")
        else:
            why = []
            if bad:
                why.append(f"mismatch at kill point{'s' if len(bad) > 1 else ''} "
                           f"{', '.join(map(str, bad))}")
            if self.flagged:
                why.append(f"flagged: {', '.join(self.flagged)}")
            lines.append(f"\nFAILED: {'; '.join(why)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def crashtest(
    agent: Agent | str | Callable[[], Agent],
    task: str,
    *,
    kill_points: str | Iterable[int] = "all",
    pure: Collection[str] = (),
    allow_real_model: bool = False,
    timeout: float = 300.0,
    keep: str | os.PathLike[str] | None = None,
) -> CrashReport:
    """Kill ``agent`` doing ``task`` after each durable write, resume it, and report.

    ``agent`` is an `Agent` defined at the top level of an importable module
    (or a script), a function building one, or ``"module:attribute"`` /
    ``"path/to/file.py:attribute"``: each kill point runs it in new processes.
    ``kill_points`` is ``"all"``, or the write numbers to kill after
    (``"1,3"`` or ``[1, 3]``). ``pure`` names tools without outside effects.
    ``timeout`` bounds each child process (seconds); ``keep`` is a directory
    that keeps the scratch stores and ledgers to look at. Raises
    `ConfigurationError` for bad arguments or a real provider model, and
    `CrashtestError` when the clean run does not finish on its own.
    """
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"crashtest(task=...) must be a non-empty str, got {task!r}")
    if os.environ.get(_IN_CHILD):
        raise CrashtestError(
            "crashtest was called while a crash-test child imported the agent's module: call "
            "it under `if __name__ == '__main__':` or in a test function, not at import"
        )
    spec = spec_of(agent)
    loaded = agent if isinstance(agent, Agent) else load_agent(spec)
    check_model(loaded, allow_real_model=allow_real_model)
    unknown = sorted(set(pure) - set(loaded.tools))
    if unknown:
        raise ConfigurationError(
            f"crashtest(pure=...) names {unknown}, which are not tools of the agent "
            f"(its tools: {', '.join(sorted(loaded.tools)) or 'none'})"
        )
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return _crashtest(loaded, spec, task, kill_points, pure, timeout, Path(keep), True)
    with tempfile.TemporaryDirectory(prefix="durable-agent-crashtest-") as scratch:
        return _crashtest(loaded, spec, task, kill_points, pure, timeout, Path(scratch), False)


def _crashtest(
    agent: Agent,
    spec: str,
    task: str,
    wanted: str | Iterable[int],
    pure: Collection[str],
    timeout: float,
    work: Path,
    kept: bool,
) -> CrashReport:
    child = _Children(spec, task, timeout, work)
    clean = child.run("clean", "start", None)
    if clean.get("state") != "DONE":
        raise CrashtestError(
            f"the clean run of {spec} ended {clean.get('state') or 'in an error'}"
            f"{' (' + clean['error'] + ')' if clean.get('error') else ''}"
            f"{' waiting for ' + ', '.join(clean['waiting']) if clean.get('waiting') else ''}; "
            "crashtest needs a task the agent finishes on its own"
        )
    writes: int = clean["writes"]
    points = _kill_points(wanted, writes)
    ledgers = [child.ledger("clean")]
    results = []
    for k in points:
        name = f"kill-{k}"
        killed = child.spawn(name, "start", k)
        ledgers.append(child.ledger(name))
        if killed.returncode != -signal.SIGKILL:
            if killed.returncode == 0:
                done = _last_json(killed.stdout)
                results.append(KillPoint(
                    k, "-", done.get("state"), done.get("output"), False,
                    problem=f"the run ended after {done.get('writes')} writes, before write {k} "
                            f"(the clean run made {writes}): is the agent deterministic?"))
                continue
            raise child.failure(name, killed)
        resumed = child.run(name, "resume", None)
        results.append(_kill_point(k, clean["carried"][k - 1], resumed, clean["output"],
                                   child.read(name)))
    tools = _findings(agent, pure, [child.read_path(p) for p in ledgers], results)
    return CrashReport(spec, task, writes, clean["output"], tuple(results), tools,
                       str(work) if kept else None)


def _kill_points(wanted: str | Iterable[int], writes: int) -> list[int]:
    if isinstance(wanted, str):
        if wanted.strip() == "all":
            return list(range(1, writes + 1))
        try:
            chosen = [int(p) for p in wanted.split(",") if p.strip()]
        except ValueError:
            raise ConfigurationError(
                f"kill points {wanted!r}: write 'all' or write numbers such as 1,3"
            ) from None
    else:
        chosen = list(wanted)
    wrong = [k for k in chosen if isinstance(k, bool) or not isinstance(k, int)
             or not 1 <= k <= writes]
    if wrong or not chosen:
        raise ConfigurationError(
            f"kill points {wrong or chosen}: the clean run made {writes} durable writes, so a "
            f"kill point is a number from 1 to {writes} (or 'all')"
        )
    return sorted(set(chosen))


def _kill_point(
    k: int, carried: str, resumed: dict[str, Any], answer: str, ledger: list[dict[str, Any]]
) -> KillPoint:
    before = {i["call_id"] for i in resumed["intents"] if i["seq"] <= resumed["resumed_at_seq"]}
    tool_of = {i["call_id"]: i["tool"] for i in resumed["intents"]}
    started: dict[str, list[str]] = {}
    for entry in ledger:
        if entry["event"] == "started":
            started.setdefault(entry["call_id"], []).append(entry["phase"])
            tool_of.setdefault(entry["call_id"], entry["tool"])
    again = [c for c, phases in started.items() if c in before and "resume" in phases]
    twice = [c for c, phases in started.items() if len(phases) > 1]
    matched = resumed["state"] == "DONE" and resumed["output"] == answer
    problem = None
    if not matched:
        problem = (resumed.get("error") or
                   f"ended {resumed['state']} with {resumed['output']!r}, not {answer!r}")
    return KillPoint(
        k, carried, resumed["state"], resumed["output"], matched,
        ran_again=tuple(f"{tool_of[c]} ({c})" for c in again),
        ran_twice=tuple(f"{tool_of[c]} ({c})" for c in twice),
        in_doubt=tuple(f"{d['tool']} ({d['call_id']})" for d in resumed["in_doubt"]),
        model_repeated=resumed["model_repeated"], problem=problem,
    )


def _findings(
    agent: Agent,
    pure: Collection[str],
    ledgers: list[list[dict[str, Any]]],
    points: list[KillPoint],
) -> tuple[ToolFinding, ...]:
    used: dict[str, bool] = {}
    for ledger in ledgers:
        for entry in ledger:
            if entry["event"] != "started":
                used[entry["tool"]] = used.get(entry["tool"], False) or entry["read_key"]
    findings = []
    for name in sorted(used):
        tool = agent.tools[name]
        again = tuple(k.write for k in points
                      if any(c.startswith(f"{name} (") for c in k.ran_again + k.ran_twice))
        how = "declared" if name in pure else "by inspection" if pure_by_inspection(tool) else None
        flagged = tool.idempotent and not used[name] and how is None
        where = f" (it ran again at kill point{'s' if len(again) > 1 else ''} " \
                f"{', '.join(map(str, again))})" if again else ""
        if used[name]:
            verdict = f"ok: reads ctx.idempotency_key{where}"
        elif how == "declared":
            verdict = f"ok: declared pure{where}"
        elif how is not None:
            verdict = f"ok: pure by inspection, its body calls nothing{where}"
        elif not tool.idempotent:
            verdict = "ok: idempotent=False, a call in doubt waits for a human"
        else:
            did = f"; it did at kill point{'s' if len(again) > 1 else ''} " \
                  f"{', '.join(map(str, again))}" if again else ""
            verdict = (
                f"FLAGGED: may run again after a crash (at-least-once{did}) and never reads "
                "ctx.idempotency_key: pass the key to the service it changes, or declare it "
                "idempotent=False; if it has no outside effect, name it in pure= (--pure)"
            )
        findings.append(ToolFinding(name, tool.idempotent, used[name], how, again, flagged,
                                    verdict))
    return tuple(findings)


class _Children:
    """Starts the child processes of one crash test, each on its own scratch store."""

    def __init__(self, spec: str, task: str, timeout: float, work: Path) -> None:
        self.spec, self.task, self.timeout, self.work = spec, task, timeout, work

    def ledger(self, name: str) -> Path:
        return self.work / f"{name}.ledger.jsonl"

    def read(self, name: str) -> list[dict[str, Any]]:
        return self.read_path(self.ledger(name))

    @staticmethod
    def read_path(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def spawn(
        self, name: str, phase: str, kill_after: int | None
    ) -> subprocess.CompletedProcess[str]:
        args = {
            "agent": self.spec,
            "task": self.task,
            "store": str(self.work / f"{name}.db"),
            "ledger": str(self.ledger(name)),
            "run_id": f"crashtest-{name}-{uuid.uuid5(uuid.NAMESPACE_URL, self.task).hex[:8]}",
            "phase": phase,
            "kill_after": kill_after,
            "path": [p for p in sys.path if p],
        }
        try:
            return subprocess.run(
                [sys.executable, "-m", _CHILD, json.dumps(args)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=self.timeout,
                env={**os.environ, _IN_CHILD: "1"},
            )
        except subprocess.TimeoutExpired:
            raise CrashtestError(
                f"crashtest: the {phase} process of {name} did not finish within "
                f"{self.timeout:g} s (raise timeout= if the agent is slow)"
            ) from None

    def run(self, name: str, phase: str, kill_after: int | None) -> dict[str, Any]:
        done = self.spawn(name, phase, kill_after)
        if done.returncode != 0:
            raise self.failure(name, done)
        return _last_json(done.stdout)

    @staticmethod
    def failure(name: str, done: subprocess.CompletedProcess[str]) -> CrashtestError:
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
        return CrashtestError(
            f"crashtest: a process of {name} exited with status {done.returncode}: {tail[0]}"
        )


def _last_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise CrashtestError(f"crashtest: a child printed no result: {stdout[-500:]!r}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
