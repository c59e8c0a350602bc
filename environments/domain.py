"""A domain: its database template, tools, policy, tasks and split, loaded from one folder.

Design
------
A domain folder holds ``db.json`` (the fixture), ``policy.md``, ``tasks.json`` and optionally ``split.json``;
the tools are passed in as Python functions (see ``environments.tools``). ``terminal_tools`` are the tools
whose call ends the episode (a hand-off such as ``escalate_to_human``). ``system_prompt()`` is the agent's
system message: the policy, then the tool schemas and the Hermes ``<tool_call>`` calling convention; the policy
alone for a model whose chat template renders the tools (``flywheel.agent_policy.template_tools``), so that a real
model sees the tool list once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from environments.db import MockDatabase
from environments.tasks import Task, load_policy, load_split, load_tasks
from environments.tools import Tool, tool_schema

TOOL_CALL_HELP = (
    "To call a tool, write one block per call:\n"
    '<tool_call>{"name": "<tool name>", "arguments": {<arguments as JSON>}}</tool_call>\n'
    "Tool results come back as tool messages. Write a message without tool calls to talk to the user."
)


@dataclass
class Domain:
    name: str
    db: MockDatabase
    tools: dict[str, Tool]
    policy: str
    tasks: list[Task]
    split: dict[str, list[str]] = field(default_factory=dict)
    terminal_tools: frozenset[str] = frozenset()

    @classmethod
    def from_folder(cls, name: str, folder: str | Path, tools: list[Tool],
                    terminal_tools: frozenset[str] = frozenset()) -> Domain:
        folder = Path(folder)
        tasks = load_tasks(folder / "tasks.json")
        split_path = folder / "split.json"
        split = load_split(split_path, tasks) if split_path.exists() else {}
        by_name = {fn.__name__: fn for fn in tools}
        unknown = sorted(set(terminal_tools) - set(by_name))
        if unknown:
            raise ValueError(f"domain {name}: terminal_tools {unknown} are not among its tools")
        return cls(name=name, db=MockDatabase.from_json(folder / "db.json"), tools=by_name,
                   policy=load_policy(folder / "policy.md"), tasks=tasks, split=split,
                   terminal_tools=frozenset(terminal_tools))

    def task(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(f"domain {self.name}: no task {task_id!r}")

    def schemas(self) -> list[dict]:
        return [tool_schema(fn) for fn in self.tools.values()]

    def system_prompt(self, tools: bool = True) -> str:
        """The agent's system message: the policy, then the tool list and how to call (``tools=False``: the policy
        alone, for a model whose chat template renders the tools it is handed in its own format)."""
        if not tools:
            return self.policy.strip()
        listed = "\n".join(json.dumps(s, sort_keys=True) for s in self.schemas())
        return f"{self.policy.strip()}\n\n# Tools\n<tools>\n{listed}\n</tools>\n\n{TOOL_CALL_HELP}"
