"""`Task`: what to do, and the run id it runs under."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from durable_agent.errors import ConfigurationError
from durable_agent.records import OutputFormat
from durable_agent.tools import Tool, toolset

__all__ = ["Task", "check_run_id"]


def check_run_id(run_id: object, where: str) -> None:
    """Refuse a run id no store can hold, before anything is stored or looked up.

    Only what no store ever held (empty, blank, a lone surrogate): lookups of
    runs stored before stricter checks still work. A new run's id is checked
    further where it is created (`durable_agent._names.check_new_run_id`).
    """
    if not isinstance(run_id, str) or not run_id.strip():
        raise ConfigurationError(f"{where} must be a non-empty str, got {run_id!r}")
    try:
        run_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        # repr() escapes the surrogate, so the message itself is printable and storable.
        raise ConfigurationError(
            f"{where}: run id {run_id!r} holds a lone surrogate {run_id[exc.start]!r} at "
            f"position {exc.start}, which UTF-8 cannot encode, so no store can keep it; "
            "use an id of valid Unicode text"
        ) from None


class Task:
    """What to do: a description for the model, task-specific tools and an optional run id.

    A caller-chosen ``run_id`` makes starting idempotent: doing a task whose run
    already exists continues that run instead of starting another. An id that
    would name a new run must be one every store keeps intact (no control
    characters, at most 128 characters: `durable_agent._names.check_new_run_id`),
    checked when the run would be created; a stored run is found by any id. A
    stored run started with another description, system prompt, tools or output
    format raises `RunConflictError` naming the difference;
    ``continue_changed=True`` continues it anyway (with this agent's tools).
    After the task starts, ``run_id`` holds the id of its run.

    With ``response_format`` (a pydantic model class) the final answer must be
    JSON matching it; an answer that fails validation is sent back to the model
    within the retry budget, and ``do_async`` returns the model instance.
    """

    def __init__(
        self,
        description: str,
        *,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        run_id: str | None = None,
        response_format: type[BaseModel] | None = None,
        continue_changed: bool = False,
    ) -> None:
        if response_format is not None and not (
            isinstance(response_format, type) and issubclass(response_format, BaseModel)
        ):
            raise ConfigurationError(
                f"Task(response_format=...) must be a pydantic model class, got {response_format!r}"
            )
        if not isinstance(description, str) or not description.strip():
            raise ConfigurationError(
                f"Task(description=...) must be a non-empty str, got {description!r}"
            )
        if run_id is not None:
            check_run_id(run_id, "Task(run_id=...)")
        self.description = description
        self.tools = toolset(tools, owner="Task")
        self.run_id = run_id
        self.response_format = response_format
        self.continue_changed = bool(continue_changed)

    def output_format(self) -> OutputFormat | None:
        """The stored form of ``response_format``: its name and JSON schema."""
        cls = self.response_format
        if cls is None:
            return None
        return OutputFormat(
            name=cls.__name__,
            json_schema=cls.model_json_schema(),
            description=inspect.getdoc(cls) or "",
        )

    def __repr__(self) -> str:
        return f"Task({self.description!r}, run_id={self.run_id!r})"
