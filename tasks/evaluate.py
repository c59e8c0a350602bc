"""The evaluate stage: the candidate against the champion (or the base) on held-out prompts, gates and a decision.

1. the eval set: the newest rows of the scored snapshot (the time-based hold-out the train stage never learns from)
   plus an optional golden set (``load_eval_set``); a prompt's reference is its logged answer when feedback marked it
   good (or the golden answer): the ``known_good`` gate checks the candidate still gives those;
2. answers, scores and measures of each role: candidate, champion (once there is one) and base; the online reward
   of the score stage scores them exactly as in training, ``models.decoding.AdapterPolicies`` decodes and measures;
3. the statistics, gates and decision of ``flywheel.stats``, the report of ``flywheel.report``, an MLflow run.

``evaluate_with`` takes every model-facing step as a callable, so the statistics and gates are testable without a
model; ``run_evaluation`` wires them from the config and the registry; ``evaluate_candidate`` is the Prefect task
(no retries: it is compute, not I/O).

Scores: ``score(prompts, completions) -> {component: [float], ..., "total": [float]}`` (NaN = missing).
Judge: ``pairwise(prompts, a, b) -> [P(a better)]``; the candidate is judged shown first and shown second, which
cancels position bias.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from prefect import task

from flywheel.base_model import base_model_of
from flywheel.config import FlywheelConfig
from flywheel.config.release import EvaluateConfig
from flywheel.golden_set import EvalSet, read_golden_set
from flywheel.records import Candidate, Decision, Evaluation, Scores
from flywheel.registry import Registry
from flywheel.report import write_report, write_responses
from flywheel.rewards.judge import JudgeClient, load_rubric
from flywheel.rewards.online import build_online_reward
from flywheel.rewards.pairwise import Preference, preference_judge
from flywheel.rewards.spec import components_of
from flywheel.snapshots import holdout_split, is_good
from flywheel.stats import TOTAL, EvalReport, WinRate, build_report, decide, summarize, win_rate

Prompt = list[dict]
GenerateFn = Callable[[str, list[Prompt]], list[str]]  # (role, prompts) -> answers
ScoreFn = Callable[[list[Prompt], list[str]], dict[str, list[float]]]  # (prompts, answers) -> component -> scores
MeasureFn = Callable[[str, list[Prompt], list[str]], dict[str, list[float]]]  # -> kl | entropy | length -> values
LogRunFn = Callable[[EvalReport, Decision, Path], str | None]  # -> MLflow run id


# ---------------------------------------------------------------------------------------------------- eval set
def held_out_prompts(snapshot: str | Path, cfg: EvaluateConfig) -> tuple[list[Prompt], list[str | None]]:
    """Distinct prompts of the newest ``eval_fraction`` rows, newest first, minus prompts also in the older rows; and
    per prompt its logged answer when production's feedback marked it good (``flywheel.snapshots.is_good``), else
    None."""
    import pandas as pd
    import pyarrow.parquet as pq

    columns = ["timestamp", "messages", "completion", "resolved", "thumbs", "escalated"]
    df = pd.read_parquet(snapshot, columns=[c for c in columns if c in pq.read_schema(snapshot).names])
    held = holdout_split(df["timestamp"].to_numpy(), cfg.eval_fraction)
    seen = set(df.loc[~held, "messages"])
    ev = df[held & ~df["messages"].isin(seen)].sort_values("timestamp", ascending=False)
    ev = ev.drop_duplicates("messages").head(cfg.max_prompts)
    rows = ev.to_dict("records")
    references = [str(r["completion"]) if "completion" in r and is_good(r) else None for r in rows]
    return [json.loads(r["messages"]) for r in rows], references


def load_eval_set(snapshot: str | Path | None, cfg: EvaluateConfig) -> EvalSet:
    """Held-out prompts of the snapshot (capped at ``max_prompts``, with their known-good logged answers) + the golden
    set, if configured."""
    prompts, references = held_out_prompts(snapshot, cfg) if snapshot is not None else ([], [])
    out = EvalSet(prompts=prompts, references=references, source=["logs"] * len(prompts))
    if cfg.golden_set is not None:
        gold = read_golden_set(cfg.golden_set)
        out = EvalSet(prompts=out.prompts + gold.prompts, references=out.references + gold.references,
                      source=out.source + gold.source)
    if not out.prompts:
        raise ValueError(f"evaluate: no evaluation prompts (snapshot {snapshot}, golden_set {cfg.golden_set})")
    return out


# ---------------------------------------------------------------------------------------------------- evaluation
def score_answers(score: ScoreFn, prompts: list[Prompt], answers: list[str]) -> dict[str, list[float]]:
    """Every component's score of each answer, as floats; the score function must return a ``total``."""
    scores = {c: list(map(float, v)) for c, v in score(prompts, answers).items()}
    if TOTAL not in scores:
        raise ValueError(f"evaluate: the score function must return a '{TOTAL}' component, got {sorted(scores)}")
    return scores


def judge_both_orders(pairwise: Preference, prompts: list[Prompt], candidate: list[str], champion: list[str],
                      cfg: EvaluateConfig) -> WinRate | None:
    """The candidate's win-rate over the champion, judged with the candidate shown first and shown second."""
    return win_rate(pairwise(prompts, candidate, champion), pairwise(prompts, champion, candidate),
                    cfg.bootstrap_samples, cfg.seed)


def evaluate_with(
    eval_set: EvalSet,
    generate: GenerateFn,
    score: ScoreFn,
    cfg: EvaluateConfig,
    out_dir: str | Path,
    *,
    kinds: dict[str, str] | None = None,
    measure: MeasureFn | None = None,
    pairwise: Preference | None = None,
    champion_version: int | None = None,
    candidate_uri: str = "",
    candidate_run_id: str | None = None,
    log_run: LogRunFn | None = None,
) -> Evaluation:
    """Answer, score and measure with each role, judge pairwise, decide, write the report, log the run.

    Roles: candidate and base, plus the champion when ``champion_version`` is given (then it is the reference).
    """
    roles = ["candidate", "base"] if champion_version is None else ["candidate", "champion", "base"]
    prompts = eval_set.prompts
    # 1. answer, score, measure
    responses = {r: generate(r, prompts) for r in roles}
    scores = {r: score_answers(score, prompts, responses[r]) for r in roles}
    measures = {r: measure(r, prompts, responses[r]) if measure else {} for r in roles}
    # 2. pairwise judge, candidate vs champion in both orders
    win = None
    if pairwise is not None and "champion" in responses:
        win = judge_both_orders(pairwise, prompts, responses["candidate"], responses["champion"], cfg)
    # 3. statistics and gates
    report = build_report(responses, scores, kinds or {}, measures, cfg, prompts, champion_version, win,
                          references=eval_set.references)
    decision = decide(report, cfg.gates)
    # 4. report files and the MLflow run
    json_path, html_path = write_report(report, decision, scores, measures, out_dir)
    write_responses(out_dir, prompts, eval_set.source, responses)
    run_id = log_run(report, decision, Path(out_dir)) if log_run else None
    return Evaluation(candidate_uri=candidate_uri, candidate_run_id=candidate_run_id,
                      champion_version=champion_version, report_json=str(json_path), report_html=str(html_path),
                      run_id=run_id, passed=decision.passed, decision=decision, summary=summarize(report, decision))


# ---------------------------------------------------------------------------------------------------- from config
def evaluation_run_logger(registry: Registry, run_name: str, tags: dict[str, str] | None = None) -> LogRunFn:
    """``log_run`` for ``evaluate_with``: an MLflow run with the role means and gate values as metrics, the report
    folder as artifacts under ``evaluation/``."""
    def log_run(report: EvalReport, decision: Decision, out: Path) -> str:
        client = registry.client
        run = client.create_run(registry.experiment_id(), run_name=run_name, tags={"stage": "evaluate", **(tags or {})})
        rid = run.info.run_id
        for role, st in report.roles.items():
            for comp, est in st.components.items():
                if est.mean is not None:
                    client.log_metric(rid, f"eval/{role}/{comp}", est.mean)
            if st.kl and st.kl.mean is not None:
                client.log_metric(rid, f"eval/{role}/kl", st.kl.mean)
            if st.length.mean is not None:
                client.log_metric(rid, f"eval/{role}/length", st.length.mean)
        for g in decision.gates:
            if g.value is not None:
                client.log_metric(rid, f"gate/{g.name}", g.value)
        client.log_metric(rid, "gate/passed", float(decision.passed))
        client.log_artifacts(rid, str(out), "evaluation")
        client.set_terminated(rid)
        return rid

    return log_run


def pairwise_judge(cfg: FlywheelConfig) -> Preference | None:
    """Pairwise LLM judge from ``rewards.judge`` and the first ``llm_judge`` component's rubric; None if not configured.

    ``judge_pairs`` already asks both orders and counts a win only when they agree; cached verdicts make the
    second (mirrored) call free.
    """
    if not cfg.rewards.judge.base_url:
        return None
    rubrics = [c.params.get("rubric") for c in components_of(cfg) if c.kind == "llm_judge" and c.params.get("rubric")]
    if not rubrics:
        return None
    return preference_judge(JudgeClient.from_config(cfg.rewards.judge, cfg.state), load_rubric(rubrics[0]))


def run_evaluation(cfg: FlywheelConfig, candidate_uri: str | Path, scores: Scores | None, *,
                   snapshot: str | Path | None = None, candidate_run_id: str | None = None,
                   base_model: str | None = None, score: ScoreFn | None = None, kinds: dict[str, str] | None = None,
                   pairwise: Preference | None = None, out_dir: str | Path | None = None) -> Evaluation:
    """Evaluate the adapter at ``candidate_uri`` against the registry's champion (or the base).

    Eval set: ``snapshot`` (default: the scored snapshot of ``scores``) + ``evaluate.golden_set``. Score: the online
    reward of ``scores``' spec (the config's components without one) unless ``score`` is given. Base: ``base_model``,
    else the champion's ``base_model`` lineage tag, else ``model.base``.
    """
    from models.decoding import AdapterPolicies

    eval_set = load_eval_set(snapshot or (scores.scored_uri if scores is not None else None), cfg.evaluate)
    registry = Registry.from_config(cfg)
    champion = registry.champion()
    adapters = {"candidate": Path(candidate_uri)}
    if champion is not None:
        _, adapters["champion"] = registry.fetch(champion.version)
    if score is None:
        reward = build_online_reward(cfg, scores)
        score, kinds = reward.score, {s.name: s.kind for s in reward.specs}
    if pairwise is None and champion is not None:
        pairwise = pairwise_judge(cfg)
    ev = cfg.evaluate
    policies = AdapterPolicies(base_model or base_model_of(cfg, champion.base_model if champion else None), adapters,
                               batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, temperature=ev.temperature,
                               seed=ev.seed, device=cfg.model.device, dtype=cfg.model.dtype)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = Path(out_dir or cfg.state / "reports" / f"eval-{stamp}-{Path(candidate_uri).name}")
    tags = {"candidate_uri": str(candidate_uri), **({"candidate_run_id": candidate_run_id} if candidate_run_id else {})}
    return evaluate_with(
        eval_set, policies.generate, score, ev, out, kinds=kinds, measure=policies.measure, pairwise=pairwise,
        champion_version=champion.version if champion else None, candidate_uri=str(candidate_uri),
        candidate_run_id=candidate_run_id, log_run=evaluation_run_logger(registry, f"evaluate-{stamp}", tags))


@task(name="evaluate_candidate")
def evaluate_candidate(cfg: FlywheelConfig, candidate: Candidate, scores: Scores) -> Evaluation:
    """Candidate vs champion (or base) on the scored snapshot's newest rows: CIs, win-rate, KL, gates, decision.

    The reward spec of ``scores`` scores the answers exactly as in training; the candidate's own base is the base.
    """
    return run_evaluation(cfg, candidate.adapter_uri, scores, candidate_run_id=candidate.run_id,
                          base_model=candidate.base_model)
