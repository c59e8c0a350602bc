"""Evaluate: candidate vs champion vs base on held-out prompts, with bootstrap CIs, gates and a decision record.

Three parts, so every number can be tested without a model:
1. the eval set: the newest rows of the snapshot (time-based hold-out, never trained on) + an optional golden set;
2. statistics, pure functions over arrays: bootstrap 95 % CIs of means and of paired differences, rule pass rates,
   pairwise win-rate judged in both orders, monitors (length drift, entropy collapse, KL spike), gates -> ``Decision``;
3. ``evaluate_candidate``: generation, scoring and measuring (KL to base, entropy, length) are injected callables
   (``HFPolicies`` gives the default ones: one base in memory, each adapter a named peft adapter).

Scores: ``score(prompts, completions) -> {component: [float], ..., "total": [float]}`` (NaN = missing).
Judge: ``pairwise(prompts, a, b) -> [P(a better)]``; the candidate is judged first and second, which cancels position bias.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from flywheel.config.release import EvaluateConfig, GatesConfig, MonitorsConfig

Prompt = list[dict]
ScoreFn = Callable[[list[Prompt], list[str]], dict[str, list[float]]]
PairwiseFn = Callable[[list[Prompt], list[str], list[str]], list[float]]
TOTAL = "total"


# ---------------------------------------------------------------------------------------------------- records
class Estimate(BaseModel):
    mean: float | None  # None when every value is missing
    lo: float | None
    hi: float | None
    n: int


class RoleStats(BaseModel):
    components: dict[str, Estimate]  # mean reward per component, "total" included
    pass_rates: dict[str, Estimate]  # rule components only: share of scores >= rule_pass_threshold
    length: Estimate  # response length (tokens when measured, else characters)
    kl: Estimate | None = None  # per-sequence KL(role || base), nats
    entropy: Estimate | None = None  # mean token entropy of the role's own distribution


class WinRate(BaseModel):
    rate: float  # P(candidate judged better), both orders averaged, ties = 0.5
    lo: float
    hi: float
    consistency: float  # share of prompts where both orders agree
    n: int


class Check(BaseModel):
    """One gate or monitor: its number, threshold, outcome and a sentence saying why."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str


class Decision(BaseModel):
    passed: bool
    gates: list[Check]
    reason: str


class EvalReport(BaseModel):
    n_prompts: int
    reference: str  # "champion", or "base" when there is no champion yet
    champion_version: int | None
    kinds: dict[str, str]  # component -> rule | kpi | llm_judge | reward_model
    roles: dict[str, RoleStats]
    diff: dict[str, Estimate]  # candidate - reference, paired bootstrap, per component
    win_rate: WinRate | None
    monitors: list[Check]
    examples: list[dict]


class EvaluationResult(BaseModel):
    """What the evaluate task hands to promote."""

    candidate_uri: str
    champion_version: int | None
    report_json: str
    report_html: str
    run_id: str | None
    passed: bool
    decision: Decision
    summary: dict


# ---------------------------------------------------------------------------------------------------- eval set
class EvalSet(BaseModel):
    prompts: list[list[dict]]
    references: list[str | None]
    source: list[str]  # "logs" | "golden"


def holdout_split(timestamps: Sequence, fraction: float) -> np.ndarray:
    """Boolean mask of the rows held out for evaluation: the newest ``fraction`` by timestamp (ties at the cut go too).

    >>> holdout_split([3, 1, 2, 5, 4], 0.4).tolist()
    [False, False, False, True, True]
    """
    ts = np.asarray(timestamps)
    if len(ts) == 0:
        return np.zeros(0, dtype=bool)
    k = max(1, math.ceil(len(ts) * fraction))
    cut = np.sort(ts)[len(ts) - k]
    return ts >= cut


def read_golden_set(path: str | Path) -> EvalSet:
    """JSONL, one ``{"messages": [...], "completion": "..."?}`` per line; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"evaluate.golden_set: file not found: {p}")
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


def load_eval_set(snapshot: str | Path | None, cfg: EvaluateConfig) -> EvalSet:
    """Held-out prompts of the snapshot (newest ``eval_fraction``, minus prompts also in the training part) + golden set."""
    import pandas as pd

    prompts: list[list[dict]] = []
    refs: list[str | None] = []
    if snapshot is not None:
        df = pd.read_parquet(snapshot, columns=["timestamp", "messages"])
        held = holdout_split(df["timestamp"].to_numpy(), cfg.eval_fraction)
        seen = set(df.loc[~held, "messages"])
        ev = df[held & ~df["messages"].isin(seen)].sort_values("timestamp", ascending=False)
        ev = ev.drop_duplicates("messages").head(cfg.max_prompts)
        prompts = [json.loads(m) for m in ev["messages"]]
        refs = [None] * len(prompts)
    out = EvalSet(prompts=prompts, references=refs, source=["logs"] * len(prompts))
    if cfg.golden_set is not None:
        gold = read_golden_set(cfg.golden_set)
        out = EvalSet(prompts=out.prompts + gold.prompts, references=out.references + gold.references,
                      source=out.source + gold.source)
    if not out.prompts:
        raise ValueError(f"evaluate: no evaluation prompts (snapshot {snapshot}, golden_set {cfg.golden_set})")
    return out


# ---------------------------------------------------------------------------------------------------- statistics
def bootstrap_mean_ci(x: Sequence[float], n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean of ``x`` (NaN dropped) with a percentile-bootstrap 95 % CI."""
    v = np.asarray(x, dtype=float)
    v = v[~np.isnan(v)]  # (n,)
    if len(v) == 0:
        return Estimate(mean=None, lo=None, hi=None, n=0)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))  # (n_boot, n)
    means = v[idx].mean(axis=1)  # (n_boot,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Estimate(mean=float(v.mean()), lo=float(lo), hi=float(hi), n=len(v))


def paired_diff_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0) -> Estimate:
    """mean(a - b) over the same prompts (pairs with a missing side dropped), paired bootstrap 95 % CI."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bootstrap_mean_ci(a - b, n_boot, seed)


def pass_rate(x: Sequence[float], threshold: float, n_boot: int = 1000, seed: int = 0) -> Estimate:
    v = np.asarray(x, dtype=float)
    passed = np.where(np.isnan(v), np.nan, (v >= threshold).astype(float))
    return bootstrap_mean_ci(passed, n_boot, seed)


def win_rate(p_first: Sequence[float], p_second: Sequence[float], n_boot: int = 1000, seed: int = 0) -> WinRate | None:
    """Candidate win-rate from both orders: ``p_first`` = P(candidate better) with it shown first, ``p_second`` =
    P(champion better) with the champion shown first. Per prompt: (p_first + 1 - p_second) / 2.

    >>> win_rate([1.0, 1.0], [0.0, 1.0]).rate
    0.75
    """
    a, b = np.asarray(p_first, dtype=float), 1.0 - np.asarray(p_second, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(b))
    if not ok.any():
        return None
    a, b = a[ok], b[ok]
    est = bootstrap_mean_ci((a + b) / 2, n_boot, seed)
    consistency = float(np.mean(np.sign(a - 0.5) == np.sign(b - 0.5)))
    return WinRate(rate=est.mean, lo=est.lo, hi=est.hi, consistency=consistency, n=est.n)


def role_stats(scores: dict[str, Sequence[float]], kinds: dict[str, str], lengths: Sequence[float],
               kl: Sequence[float] | None, entropy: Sequence[float] | None, cfg: EvaluateConfig) -> RoleStats:
    b, s = cfg.bootstrap_samples, cfg.seed
    return RoleStats(
        components={c: bootstrap_mean_ci(v, b, s) for c, v in scores.items()},
        pass_rates={c: pass_rate(v, cfg.rule_pass_threshold, b, s) for c, v in scores.items() if kinds.get(c) == "rule"},
        length=bootstrap_mean_ci(lengths, b, s),
        kl=None if kl is None else bootstrap_mean_ci(kl, b, s),
        entropy=None if entropy is None else bootstrap_mean_ci(entropy, b, s),
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def monitors(roles: dict[str, RoleStats], reference: str, cfg: MonitorsConfig) -> list[Check]:
    """Reward-hacking signals of the candidate: length drift, entropy collapse, KL spike. ``passed`` = not flagged."""
    cand, ref, base = roles["candidate"], roles[reference], roles["base"]
    out = []
    r = _ratio(cand.length.mean, ref.length.mean)
    drift = r is not None and (r > cfg.length_drift_ratio or r < 1 / cfg.length_drift_ratio)
    out.append(Check(name="length_drift", value=r, threshold=cfg.length_drift_ratio, passed=not drift,
                     reason=f"candidate/{reference} mean length ratio {r if r is None else round(r, 3)}"
                            f" (flag outside [{1 / cfg.length_drift_ratio:.2f}, {cfg.length_drift_ratio}])"))
    e = _ratio(cand.entropy.mean if cand.entropy else None, base.entropy.mean if base.entropy else None)
    collapse = e is not None and e < cfg.entropy_collapse_ratio
    out.append(Check(name="entropy_collapse", value=e, threshold=cfg.entropy_collapse_ratio, passed=not collapse,
                     reason=f"candidate/base token entropy ratio {e if e is None else round(e, 3)}"
                            f" (flag below {cfg.entropy_collapse_ratio})"))
    ck = cand.kl.mean if cand.kl else None
    rk = ref.kl.mean if ref.kl and reference != "base" else None
    spike = ck is not None and ck > cfg.kl_spike_floor and (rk is None or ck > cfg.kl_spike_ratio * max(rk, 1e-9))
    if ck is not None and rk is None and reference == "base":
        spike = False  # first release: nothing to spike against; the max_kl gate still applies
    out.append(Check(name="kl_spike", value=ck, threshold=cfg.kl_spike_ratio, passed=not spike,
                     reason=f"candidate KL {ck if ck is None else round(ck, 3)} vs {reference} KL "
                            f"{rk if rk is None else round(rk, 3)} (flag above {cfg.kl_spike_ratio}x and {cfg.kl_spike_floor})"))
    return out


def decide(report: EvalReport, gates: GatesConfig) -> Decision:
    """Apply every gate; the candidate passes only if all pass."""
    ref = report.reference
    out: list[Check] = []
    d = report.diff.get(TOTAL)
    if d is None or d.lo is None:
        out.append(Check(name="total_gain", value=None, threshold=gates.min_gain_ci_low, passed=False,
                         reason=f"no total reward to compare with the {ref}"))
    else:
        ok = d.lo > gates.min_gain_ci_low
        out.append(Check(name="total_gain", value=d.lo, threshold=gates.min_gain_ci_low, passed=ok,
                         reason=f"total reward gain vs {ref} {d.mean:+.4f}, 95% CI [{d.lo:+.4f}, {d.hi:+.4f}];"
                                f" lower bound {'>' if ok else '<='} {gates.min_gain_ci_low}"))
    cand, refs = report.roles["candidate"], report.roles[ref]
    for comp, est in cand.pass_rates.items():
        other = refs.pass_rates.get(comp)
        if est.mean is None or other is None or other.mean is None:
            continue
        drop = other.mean - est.mean
        ok = drop <= gates.rule_tolerance + 1e-12
        out.append(Check(name=f"rule_{comp}", value=est.mean - other.mean, threshold=-gates.rule_tolerance, passed=ok,
                         reason=f"rule '{comp}' pass rate {est.mean:.3f} vs {ref} {other.mean:.3f}"
                                f" ({'within' if ok else 'drops more than'} tolerance {gates.rule_tolerance})"))
    if report.win_rate is None:
        out.append(Check(name="win_rate", value=None, threshold=gates.min_win_rate, passed=True,
                         reason="no pairwise judge configured: skipped"))
    else:
        w = report.win_rate
        ok = w.rate >= gates.min_win_rate
        out.append(Check(name="win_rate", value=w.rate, threshold=gates.min_win_rate, passed=ok,
                         reason=f"judge win-rate {w.rate:.3f} [{w.lo:.3f}, {w.hi:.3f}] over both orders"
                                f" (consistency {w.consistency:.2f}) {'>=' if ok else '<'} {gates.min_win_rate}"))
    kl = cand.kl.mean if cand.kl else None
    if kl is None:
        out.append(Check(name="kl", value=None, threshold=gates.max_kl, passed=True, reason="KL not measured: skipped"))
    else:
        ok = kl <= gates.max_kl
        out.append(Check(name="kl", value=kl, threshold=gates.max_kl, passed=ok,
                         reason=f"KL(candidate || base) {kl:.4f} nats {'<=' if ok else '>'} {gates.max_kl}"))
    if gates.block_on_monitors:
        flagged = [m.name for m in report.monitors if not m.passed]
        out.append(Check(name="monitors", value=float(len(flagged)), threshold=0.0, passed=not flagged,
                         reason=f"flagged monitors: {', '.join(flagged) or 'none'}"))
    failed = [g for g in out if not g.passed]
    reason = "all gates passed" if not failed else "failed: " + "; ".join(g.reason for g in failed)
    return Decision(passed=not failed, gates=out, reason=reason)


def build_report(responses: dict[str, list[str]], scores: dict[str, dict[str, list[float]]], kinds: dict[str, str],
                 measures: dict[str, dict[str, list[float] | None]], cfg: EvaluateConfig, prompts: list[Prompt],
                 champion_version: int | None = None, win: WinRate | None = None) -> EvalReport:
    """Pure: per-role statistics, candidate - reference differences, monitors. Roles: candidate, base[, champion]."""
    reference = "champion" if "champion" in responses else "base"
    roles = {}
    for role, comps in scores.items():
        m = measures.get(role, {})
        lengths = m.get("length") or [float(len(c)) for c in responses[role]]
        roles[role] = role_stats(comps, kinds, lengths, m.get("kl"), m.get("entropy"), cfg)
    diff = {c: paired_diff_ci(scores["candidate"][c], scores[reference][c], cfg.bootstrap_samples, cfg.seed)
            for c in scores["candidate"] if c in scores[reference]}
    examples = [{"prompt": prompts[i], **{r: responses[r][i] for r in responses}} for i in range(min(5, len(prompts)))]
    return EvalReport(n_prompts=len(prompts), reference=reference, champion_version=champion_version, kinds=kinds,
                      roles=roles, diff=diff, win_rate=win, monitors=monitors(roles, reference, cfg.monitors),
                      examples=examples)


def summarize(report: EvalReport, decision: Decision) -> dict:
    """A compact summary for registry tags and logs (fits in an MLflow tag)."""
    cand = report.roles["candidate"]
    d = report.diff.get(TOTAL)
    return {
        "n": report.n_prompts, "reference": report.reference, "champion_version": report.champion_version,
        "total": cand.components.get(TOTAL, Estimate(mean=None, lo=None, hi=None, n=0)).mean,
        "gain": None if d is None else d.mean, "gain_ci": None if d is None else [d.lo, d.hi],
        "kl": cand.kl.mean if cand.kl else None, "length": cand.length.mean,
        "win_rate": report.win_rate.rate if report.win_rate else None,
        "flags": [m.name for m in report.monitors if not m.passed], "passed": decision.passed,
    }


# ---------------------------------------------------------------------------------------------------- orchestration
def evaluate_candidate(
    eval_set: EvalSet,
    generate: Callable[[str, list[Prompt]], list[str]],
    score: ScoreFn,
    cfg: EvaluateConfig,
    out_dir: str | Path,
    *,
    kinds: dict[str, str] | None = None,
    measure: Callable[[str, list[Prompt], list[str]], dict[str, list[float]]] | None = None,
    pairwise: PairwiseFn | None = None,
    champion_version: int | None = None,
    has_champion: bool = False,
    candidate_uri: str = "",
    log_run: Callable[[EvalReport, Decision, Path], str | None] | None = None,
) -> EvaluationResult:
    """Generate for each role, score, measure, build the report, decide, and write report.json + report.html."""
    from flywheel.report import write_report

    roles = ["candidate", "champion", "base"] if has_champion else ["candidate", "base"]
    prompts = eval_set.prompts
    responses = {r: generate(r, prompts) for r in roles}
    scores = {r: {c: list(map(float, v)) for c, v in score(prompts, responses[r]).items()} for r in roles}
    if TOTAL not in scores["candidate"]:
        raise ValueError(f"evaluate: the score function must return a '{TOTAL}' component, got {sorted(scores['candidate'])}")
    measures = {r: measure(r, prompts, responses[r]) if measure else {} for r in roles}
    win = None
    if pairwise is not None and has_champion:
        win = win_rate(pairwise(prompts, responses["candidate"], responses["champion"]),
                       pairwise(prompts, responses["champion"], responses["candidate"]), cfg.bootstrap_samples, cfg.seed)
    report = build_report(responses, scores, kinds or {}, measures, cfg, prompts, champion_version, win)
    decision = decide(report, cfg.gates)
    out = Path(out_dir)
    json_path, html_path = write_report(report, decision, scores, measures, out)
    (out / "responses.jsonl").write_text("".join(
        json.dumps({"prompt": p, "source": s, **{r: responses[r][i] for r in roles}}) + "\n"
        for i, (p, s) in enumerate(zip(prompts, eval_set.source))))
    run_id = log_run(report, decision, out) if log_run else None
    return EvaluationResult(candidate_uri=candidate_uri, champion_version=champion_version, report_json=str(json_path),
                            report_html=str(html_path), run_id=run_id, passed=decision.passed, decision=decision,
                            summary=summarize(report, decision))


# ---------------------------------------------------------------------------------------------------- HF backend
class HFPolicies:
    """Base model + named LoRA adapters on ONE copy of the base (peft); role "base" = adapters disabled.

    ``generate(role, prompts)`` decodes (greedy at temperature 0); ``measure(role, prompts, completions)`` gives, per
    sequence, KL(role || base) summed over response tokens (exact, over the whole vocabulary), the mean token entropy
    and the response length in tokens.
    """

    def __init__(self, base_path: str | Path, adapters: dict[str, str | Path], cfg: EvaluateConfig,
                 device: str = "cpu", dtype: str = "float32"):
        import torch
        from peft import PeftModel

        from models.policy import load_base, resolve_device

        self.cfg, self.device = cfg, resolve_device(device)
        model, self.tok = load_base(base_path, dtype, str(self.device))  # same tokenizer/pad handling as training
        names = list(adapters)
        model = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(adapters[name]), adapter_name=name)
        self.model = model.to(self.device).eval()
        self.torch = torch

    def _mode(self, role: str):
        import contextlib

        if role == "base":
            return self.model.disable_adapter()
        self.model.set_adapter(role)
        return contextlib.nullcontext()

    def _prompt_ids(self, prompts: list[Prompt]) -> list[list[int]]:
        texts = [self.tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        return [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    def generate(self, role: str, prompts: list[Prompt]) -> list[str]:
        torch, tok, cfg = self.torch, self.tok, self.cfg
        out: list[str] = []
        for i in range(0, len(prompts), cfg.batch_size):
            ids = self._prompt_ids(prompts[i:i + cfg.batch_size])
            batch = tok.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
            sample = cfg.temperature > 0
            with torch.no_grad(), self._mode(role):
                gen = self.model.generate(**batch, max_new_tokens=cfg.max_new_tokens, do_sample=sample,
                                          temperature=cfg.temperature if sample else None, top_p=None, top_k=None,
                                          pad_token_id=tok.pad_token_id)
            new = gen[:, batch["input_ids"].shape[1]:]  # (b, new_tokens)
            out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
        return out

    def measure(self, role: str, prompts: list[Prompt], completions: list[str]) -> dict[str, list[float]]:
        torch, tok = self.torch, self.tok
        kl_out, ent_out, len_out = [], [], []
        bs = self.cfg.batch_size
        for i in range(0, len(prompts), bs):
            p_ids = self._prompt_ids(prompts[i:i + bs])
            r_ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions[i:i + bs]]
            seqs = [p + r for p, r in zip(p_ids, r_ids)]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), tok.pad_token_id)  # (b, T) right-padded
            attn = torch.zeros_like(ids)
            mask = torch.zeros(len(seqs), width - 1)  # (b, T-1): 1 where position t+1 is a response token
            for j, (p, s) in enumerate(zip(p_ids, seqs)):
                ids[j, :len(s)], attn[j, :len(s)] = torch.tensor(s), 1
                mask[j, len(p) - 1:len(s) - 1] = 1
            ids, attn, mask = ids.to(self.device), attn.to(self.device), mask.to(self.device)
            with torch.no_grad():
                with self._mode(role):
                    logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)
                with self._mode("base"):
                    logq = torch.log_softmax(self.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)
            p = logp.exp()  # (b, T-1, V)
            kl_t = (p * (logp - logq)).sum(-1)  # (b, T-1) KL(π_role || π_base) at each position
            ent_t = -(p * logp).sum(-1)  # (b, T-1)
            n = mask.sum(-1).clamp(min=1)
            kl_out += (kl_t * mask).sum(-1).tolist()
            ent_out += ((ent_t * mask).sum(-1) / n).tolist()
            len_out += mask.sum(-1).tolist()
        return {"kl": kl_out, "entropy": ent_out, "length": len_out}


# ---------------------------------------------------------------------------------------------------- from config
def resolve_base_model(cfg, champion_tags: dict | None = None) -> str:
    """Base model of the evaluation: the champion's ``base_model`` lineage tag, else ``model.base``
    (``tiny`` = ``<state>/models/tiny-base``)."""
    tagged = (champion_tags or {}).get("base_model")
    if tagged:
        return tagged
    return str(cfg.state / "models" / "tiny-base") if cfg.model.base == "tiny" else cfg.model.base


def mlflow_logger(tracking_uri: str, experiment_id: str, run_name: str):
    """``log_run`` for ``evaluate_candidate``: a run with the gate numbers as metrics and the report as artifacts."""
    from flywheel.promote import client_for

    def log_run(report: EvalReport, decision: Decision, out: Path) -> str:
        client = client_for(tracking_uri)
        run = client.create_run(experiment_id, run_name=run_name, tags={"stage": "evaluate"})
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


def judge_pairwise(cfg) -> PairwiseFn | None:
    """Pairwise LLM judge from ``rewards.judge`` and the first ``llm_judge`` component's rubric; None if not configured.

    ``judge_pairs`` already asks both orders and counts a win only when they agree; cached verdicts make the
    second (mirrored) call free.
    """
    if not cfg.rewards.judge.base_url:
        return None
    from flywheel.judge_stage import components_of
    from flywheel.rewards.judge import JudgeClient, load_rubric
    from flywheel.rewards.pairwise import judge_pairs

    rubrics = [c.params.get("rubric") for c in components_of(cfg) if c.kind == "llm_judge" and c.params.get("rubric")]
    if not rubrics:
        return None
    client, rubric = JudgeClient.from_config(cfg.rewards.judge, cfg.state), load_rubric(rubrics[0])
    value = {"a": 1.0, "b": 0.0, "tie": 0.5, None: math.nan}

    def pairwise(prompts: list[Prompt], a: list[str], b: list[str]) -> list[float]:
        return [value[o] for o in judge_pairs(client, rubric, prompts, a, b).outcomes]

    return pairwise


def run_evaluation(cfg, candidate_dir: str | Path, snapshot_uri: str | Path | None, *, scored=None,
                   score: ScoreFn | None = None, kinds: dict[str, str] | None = None, pairwise: PairwiseFn | None = None,
                   base_model: str | None = None, out_dir: str | Path | None = None) -> EvaluationResult:
    """Evaluate ``candidate_dir`` against the registry's champion (or the base) with the configured rewards."""
    import time

    from flywheel.promote import CHAMPION, alias_version, client_for, fetch_adapter
    from flywheel.tracking import ensure_experiment, tracking_uri

    uri = tracking_uri(cfg.state, cfg.registry.tracking_uri)
    name = cfg.registry.model_name or cfg.project.name
    exp = ensure_experiment(cfg.project.name, cfg.state, cfg.registry.tracking_uri)
    client = client_for(uri)
    champ_version = alias_version(client, name, CHAMPION)
    adapters = {"candidate": Path(candidate_dir)}
    tags = {}
    if champ_version is not None:
        tags = client.get_model_version(name, str(champ_version)).tags
        _, adapters["champion"] = fetch_adapter(uri, name, champ_version, cfg.state / "models" / "registry" / f"{name}-v{champ_version}")
    if score is None:
        from flywheel.judge_stage import build_online_reward

        composite = build_online_reward(cfg, scored)
        score, kinds = composite.score, {s.name: s.kind for s in composite.specs}
    if pairwise is None and champ_version is not None:
        pairwise = judge_pairwise(cfg)
    policies = HFPolicies(base_model or resolve_base_model(cfg, tags), adapters, cfg.evaluate, cfg.model.device,
                          cfg.model.dtype)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = Path(out_dir or cfg.state / "reports" / f"eval-{stamp}-{Path(candidate_dir).name}")
    return evaluate_candidate(
        load_eval_set(snapshot_uri, cfg.evaluate), policies.generate, score, cfg.evaluate, out, kinds=kinds,
        measure=policies.measure, pairwise=pairwise, champion_version=champ_version,
        has_champion=champ_version is not None, candidate_uri=str(candidate_dir),
        log_run=mlflow_logger(uri, exp, f"evaluate-{stamp}"))
