"""A golden set: hand-picked chats (JSONL, one ``{"messages": [...], "completion": "..."?}`` per line) that the
evaluate stage scores every candidate on and the deploy stage smoke-tests a hot-loaded adapter with."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel


class EvalSet(BaseModel):
    prompts: list[list[dict]]
    references: list[str | None]
    source: list[str]  # "logs" | "golden"


def read_golden_set(path: str | Path) -> EvalSet:
    """JSONL, one ``{"messages": [...], "completion": "..."?}`` per line; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"golden set: file not found: {p}")
    prompts, refs = [], []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{i}: not valid JSON: {e.msg}") from None
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise ValueError(f"{p}:{i}: 'messages' must be a list of chat messages with a 'role'")
        prompts.append(msgs)
        refs.append(obj.get("completion"))
    return EvalSet(prompts=prompts, references=refs, source=["golden"] * len(prompts))
