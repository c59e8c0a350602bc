"""The online reward: what scores the answers the policy writes during training and evaluation.

``build_online_reward(cfg, scores)`` turns the score stage's reward spec back into ``fn(prompts, completions)``:
rules + reward model + (cached) LLM judge, weighted and normalised exactly as in the scored snapshot. KPI components
are left out: they exist only for answers production actually served.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.records import Scores
from flywheel.rewards.composite import ComponentSpec, Composite
from flywheel.rewards.spec import build_graders, specs_of

if TYPE_CHECKING:
    from flywheel.config import FlywheelConfig


def load_spec(spec_uri: str | Path) -> dict:
    return json.loads(Path(spec_uri).read_text())


def build_online_reward(cfg: FlywheelConfig, scores: Scores | str | Path | None = None, device: str | None = None,
                        include_judge: bool = True) -> Composite:
    """PPO's reward from the spec of ``scores`` (a ``Scores`` record or a spec path).

    Without one it uses the config's components with the current reward model and no zscore stats.
    """
    device = device or cfg.rewards.reward_model.device
    if scores is None:
        from flywheel.rewards.reward_training import current_reward_model

        specs, rm_folder, missing = specs_of(cfg), current_reward_model(cfg), cfg.rewards.missing
    else:
        spec = load_spec(scores.spec_uri if isinstance(scores, Scores) else scores)
        specs = [ComponentSpec(**s) for s in spec["components"]]
        rm_folder, missing = (spec["reward_model"] or {}).get("folder"), spec["missing"]
    judged = include_judge and bool(cfg.rewards.judge.base_url)
    specs = [s for s in specs if s.kind != "kpi" and (judged or s.kind != "llm_judge")]
    if not specs:
        raise ValueError("rewards.components: no component can score new samples (only KPI); add a rule or "
                         "reward_model")
    return Composite(specs, build_graders(specs, cfg, rm_folder, device), missing)
