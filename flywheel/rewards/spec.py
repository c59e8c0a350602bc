"""Which reward components a run uses, and the graders that score them.

Without ``rewards.components`` the defaults are task-agnostic: the reward model trained on logged feedback (it
generalises the KPI signals to answers the policy writes), the KPI signals themselves (logged rows only) and a
``not_degenerate`` rule (no empty, repeated or runaway answers). Task rules (an answer schema, an id that must be
copied) are the user's to add in the YAML.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from flywheel.config.rewards import ComponentConfig
from flywheel.rewards.composite import ComponentSpec
from flywheel.rewards.kpi import kpi_grader
from flywheel.rewards.rules import build_rule

if TYPE_CHECKING:
    from flywheel.config import FlywheelConfig

DEFAULT_KPI_WEIGHTS = {"resolved": 1.0, "escalated": -1.0, "thumbs": 0.5}


def default_components() -> list[ComponentConfig]:
    """Reward model + KPI + not_degenerate: nothing that assumes one task's answer format."""
    return [
        ComponentConfig(name="reward_model", kind="reward_model", weight=1.0),
        ComponentConfig(name="kpi", kind="kpi", weight=1.0, params=dict(DEFAULT_KPI_WEIGHTS)),
        ComponentConfig(name="not_degenerate", kind="rule", weight=1.0, params={"check": "not_degenerate"}),
    ]


def components_of(cfg: FlywheelConfig) -> list[ComponentConfig]:
    """``rewards.components``, or the defaults; names must be unique (they are column names)."""
    comps = list(cfg.rewards.components) or default_components()
    names = [c.name for c in comps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"rewards.components: duplicate names {dupes}")
    return comps


def specs_of(cfg: FlywheelConfig) -> list[ComponentSpec]:
    return [ComponentSpec(c.name, c.kind, c.weight, c.normalize, dict(c.params)) for c in components_of(cfg)]


def build_graders(specs: list[ComponentSpec], cfg: FlywheelConfig, reward_model_folder: str | None,
                  device: str = "cpu", judge_client=None) -> dict[str, Callable]:
    """One grader ``fn(prompts, completions, **context) -> list[float]`` per component (one reward-model scorer)."""
    graders: dict[str, Callable] = {}
    scorer = None
    for i, s in enumerate(specs):
        where = f"rewards.components[{i}].params"
        if s.kind == "rule":
            graders[s.name] = build_rule(s.params, where)
        elif s.kind == "kpi":
            graders[s.name] = kpi_grader({k: float(v) for k, v in s.params.items()} or None)
        elif s.kind == "reward_model":
            if reward_model_folder is None:
                graders[s.name] = missing_grader
                continue
            if scorer is None:
                from models.reward_model import RewardModelScorer

                scorer = RewardModelScorer(reward_model_folder, device=device)
            graders[s.name] = scorer
        elif s.kind == "llm_judge":
            from flywheel.rewards.judge import JudgeClient, judge_grader, load_rubric

            if "rubric" not in s.params:
                raise ValueError(f"{where}.rubric: an llm_judge component needs a rubric (name or .md path)")
            if judge_client is None:
                judge_client = JudgeClient.from_config(cfg.rewards.judge, cfg.state)
            graders[s.name] = judge_grader(judge_client, load_rubric(s.params["rubric"]))
    return graders


def missing_grader(prompts, completions, **context) -> list[float]:
    """No reward model yet (too few labels): the component is missing for every row, not zero."""
    return [math.nan] * len(completions)
