"""Tasks in tau2-bench's ``tasks.json`` schema, their train/test split, and a domain's policy.

Design
------
The pydantic models mirror the parts of tau2-bench's task schema this package uses and ignore every other
key (``extra="ignore"``), so public task sets load unchanged. ``user_scenario.instructions`` is an object
(``reason_for_call``, ``known_info``, ``unknown_info``, ``task_instructions``, optional ``domain``) in most
sets and a plain string in some; a string is kept as ``task_instructions``. ``evaluation_criteria`` holds the
reference ``actions`` (tool name + arguments), the ``communicate_info`` strings and the ``reward_basis``.
tau2's ``ENV_ASSERTION`` and ``NL_ASSERTION`` bases are accepted when loading but are not scored here:
``Task.supported_basis`` drops them (the environment records them as ``unsupported`` in its info).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

RewardBasis = Literal["DB", "ACTION", "COMMUNICATE", "ENV_ASSERTION", "NL_ASSERTION"]
SUPPORTED_BASIS = ("DB", "ACTION", "COMMUNICATE")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Instructions(_Model):
    domain: str | None = None
    reason_for_call: str = ""
    known_info: str | None = None
    unknown_info: str | None = None
    task_instructions: str = ""


class UserScenario(_Model):
    persona: str | None = None
    instructions: Instructions

    @field_validator("instructions", mode="before")
    @classmethod
    def _string_instructions(cls, value: Any) -> Any:
        return {"task_instructions": value} if isinstance(value, str) else value


class Action(_Model):
    action_id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    requestor: Literal["user", "assistant"] = "assistant"
    info: str | None = None
    compare_args: list[str] | None = None  # tau2: only these arguments are compared (None: all of them)


class EvaluationCriteria(_Model):
    actions: list[Action] = Field(default_factory=list)
    communicate_info: list[str] = Field(default_factory=list)
    reward_basis: list[RewardBasis] = Field(default_factory=lambda: ["DB", "COMMUNICATE"])

    @field_validator("actions", "communicate_info", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class Task(_Model):
    id: str
    description: dict[str, Any] | str | None = None
    user_scenario: UserScenario
    evaluation_criteria: EvaluationCriteria = Field(default_factory=EvaluationCriteria)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_string(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @property
    def supported_basis(self) -> list[str]:
        return [b for b in self.evaluation_criteria.reward_basis if b in SUPPORTED_BASIS]

    @property
    def unsupported_basis(self) -> list[str]:
        return [b for b in self.evaluation_criteria.reward_basis if b not in SUPPORTED_BASIS]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc


def load_tasks(path: str | Path) -> list[Task]:
    """The tasks of a tau2-style ``tasks.json`` (a JSON list); errors name the file and the task."""
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a JSON list of tasks, got {type(raw).__name__}")
    tasks = []
    for index, item in enumerate(raw):
        try:
            tasks.append(Task.model_validate(item))
        except ValidationError as exc:
            ident = item.get("id", f"#{index}") if isinstance(item, dict) else f"#{index}"
            raise ValueError(f"{path}: task {ident}: {exc}") from exc
    ids = [t.id for t in tasks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate task ids {duplicates}")
    return tasks


def load_split(path: str | Path, tasks: list[Task] | None = None) -> dict[str, list[str]]:
    """``{"train": [ids], "test": [ids], ...}``; with ``tasks``, every id must name one of them."""
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ValueError(f"{path}: expected an object of split name -> list of task ids")
    split = {name: [str(i) for i in ids] for name, ids in raw.items()}
    if tasks is not None:
        known = {t.id for t in tasks}
        for name, ids in split.items():
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise ValueError(f"{path}: split {name!r} names unknown task ids {unknown}")
    return split


def load_policy(path: str | Path) -> str:
    """A domain's ``policy.md``, the agent's system-prompt rules."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no policy file")
    return path.read_text()
