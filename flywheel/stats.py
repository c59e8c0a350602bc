"""Statistics of an evaluation, pure functions over arrays: every number of the evaluate stage, without a model.

Bootstrap 95 % CIs of means and of paired differences, rule pass rates, the pairwise win-rate judged in both orders,
per-role statistics, reward-hacking monitors (length drift, entropy collapse, KL spike), and the gates that turn an
``EvalReport`` into a ``Decision``.

Scores per role: ``{component: [float], ..., "total": [float]}`` (NaN = missing). Roles: ``candidate``, ``base`` and,
once there is one, ``champion``; the reference the candidate must beat is the champion, else the base.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from flywheel.config.release import EvaluateConfig, GatesConfig, MonitorsConfig
from flywheel.records import Check, Decision

TOTAL = "total"


# ---------------------------------------------------------------------------------------------------- records
class Estimate(BaseModel):
    mean: float | None  # None when every value is missing
    lo: float | None
    hi: float | None
    n: int


class WinRate(BaseModel):
    rate: float  # P(candidate judged better), both orders averaged, ties = 0.5
    lo: float
    hi: float
    consistency: float  # share of prompts where both orders agree
    n: int


class RoleStats(BaseModel):
    components: dict[str, Estimate]  # mean reward per component, "total" included
    pass_rates: dict[str, Estimate]  # rule components only: share of scores >= rule_pass_threshold
    length: Estimate  # response length (tokens when measured, else characters)
    kl: Estimate | None = None  # per-sequence KL(role || base), nats
    entropy: Estimate | None = None  # mean token entropy of the role's own distribution
    known_good: Estimate | None = None  # share of known-good references the role's answer reproduces


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


# ---------------------------------------------------------------------------------------------------- estimates
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
    """Share of scores >= ``threshold`` (missing scores dropped), with its bootstrap 95 % CI."""
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
    """Every estimate of one role: mean per component, rule pass rates, length, KL to base and entropy."""
    b, s = cfg.bootstrap_samples, cfg.seed
    return RoleStats(
        components={c: bootstrap_mean_ci(v, b, s) for c, v in scores.items()},
        pass_rates={c: pass_rate(v, cfg.rule_pass_threshold, b, s)
                    for c, v in scores.items() if kinds.get(c) == "rule"},
        length=bootstrap_mean_ci(lengths, b, s),
        kl=None if kl is None else bootstrap_mean_ci(kl, b, s),
        entropy=None if entropy is None else bootstrap_mean_ci(entropy, b, s),
    )


# ---------------------------------------------------------------------------------------------------- monitors
def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _round(x: float | None) -> float | None:
    return x if x is None else round(x, 3)


def monitors(roles: dict[str, RoleStats], reference: str, cfg: MonitorsConfig) -> list[Check]:
    """Reward-hacking signals of the candidate: length drift, entropy collapse, KL spike. ``passed`` = not flagged."""
    cand, ref, base = roles["candidate"], roles[reference], roles["base"]
    r = _ratio(cand.length.mean, ref.length.mean)
    drift = r is not None and (r > cfg.length_drift_ratio or r < 1 / cfg.length_drift_ratio)
    length_drift = Check(name="length_drift", value=r, threshold=cfg.length_drift_ratio, passed=not drift,
                         reason=f"candidate/{reference} mean length ratio {_round(r)}"
                                f" (flag outside [{1 / cfg.length_drift_ratio:.2f}, {cfg.length_drift_ratio}])")
    e = _ratio(cand.entropy.mean if cand.entropy else None, base.entropy.mean if base.entropy else None)
    collapse = e is not None and e < cfg.entropy_collapse_ratio
    entropy_collapse = Check(name="entropy_collapse", value=e, threshold=cfg.entropy_collapse_ratio,
                             passed=not collapse, reason=f"candidate/base token entropy ratio {_round(e)}"
                                                         f" (flag below {cfg.entropy_collapse_ratio})")
    ck = cand.kl.mean if cand.kl else None
    rk = ref.kl.mean if ref.kl and reference != "base" else None
    spike = ck is not None and ck > cfg.kl_spike_floor and (rk is None or ck > cfg.kl_spike_ratio * max(rk, 1e-9))
    if ck is not None and rk is None and reference == "base":
        spike = False  # first release: nothing to spike against; the max_kl gate still applies
    kl_spike = Check(name="kl_spike", value=ck, threshold=cfg.kl_spike_ratio, passed=not spike,
                     reason=f"candidate KL {_round(ck)} vs {reference} KL {_round(rk)}"
                            f" (flag above {cfg.kl_spike_ratio}x and {cfg.kl_spike_floor})")
    return [length_drift, entropy_collapse, kl_spike]


# ---------------------------------------------------------------------------------------------------- gates
def _gain_gate(report: EvalReport, gates: GatesConfig) -> Check:
    ref, d = report.reference, report.diff.get(TOTAL)
    if d is None or d.lo is None:
        return Check(name="total_gain", value=None, threshold=gates.min_gain_ci_low, passed=False,
                     reason=f"no total reward to compare with the {ref}")
    ok = d.lo > gates.min_gain_ci_low
    return Check(name="total_gain", value=d.lo, threshold=gates.min_gain_ci_low, passed=ok,
                 reason=f"total reward gain vs {ref} {d.mean:+.4f}, 95% CI [{d.lo:+.4f}, {d.hi:+.4f}];"
                        f" lower bound {'>' if ok else '<='} {gates.min_gain_ci_low}")


def _rule_gates(report: EvalReport, gates: GatesConfig) -> list[Check]:
    ref = report.reference
    cand, refs = report.roles["candidate"], report.roles[ref]
    out = []
    for comp, est in cand.pass_rates.items():
        other = refs.pass_rates.get(comp)
        if est.mean is None or other is None or other.mean is None:
            continue
        ok = other.mean - est.mean <= gates.rule_tolerance + 1e-12
        out.append(Check(name=f"rule_{comp}", value=est.mean - other.mean, threshold=-gates.rule_tolerance, passed=ok,
                         reason=f"rule '{comp}' pass rate {est.mean:.3f} vs {ref} {other.mean:.3f}"
                                f" ({'within' if ok else 'drops more than'} tolerance {gates.rule_tolerance})"))
    return out


def _known_good_gate(report: EvalReport, gates: GatesConfig) -> Check:
    ref = report.reference
    cand, other = report.roles["candidate"].known_good, report.roles[ref].known_good
    if cand is None or other is None or cand.mean is None or other.mean is None:
        return Check(name="known_good", value=None, threshold=-gates.known_good_tolerance, passed=True,
                     reason="no held-out answer marked good by feedback: skipped")
    drop = other.mean - cand.mean
    ok = drop <= gates.known_good_tolerance + 1e-12
    return Check(name="known_good", value=cand.mean - other.mean, threshold=-gates.known_good_tolerance, passed=ok,
                 reason=f"answers marked good reproduced {cand.mean:.3f} vs {ref} {other.mean:.3f} of {cand.n}"
                        f" ({'within' if ok else 'drops more than'} tolerance {gates.known_good_tolerance})")


def _win_rate_gate(report: EvalReport, gates: GatesConfig) -> Check:
    w = report.win_rate
    if w is None:
        return Check(name="win_rate", value=None, threshold=gates.min_win_rate, passed=True,
                     reason="no pairwise judge configured: skipped")
    ok = w.rate >= gates.min_win_rate
    return Check(name="win_rate", value=w.rate, threshold=gates.min_win_rate, passed=ok,
                 reason=f"judge win-rate {w.rate:.3f} [{w.lo:.3f}, {w.hi:.3f}] over both orders"
                        f" (consistency {w.consistency:.2f}) {'>=' if ok else '<'} {gates.min_win_rate}")


def _kl_gate(report: EvalReport, gates: GatesConfig) -> Check:
    cand = report.roles["candidate"]
    kl = cand.kl.mean if cand.kl else None
    if kl is None:
        return Check(name="kl", value=None, threshold=gates.max_kl, passed=True, reason="KL not measured: skipped")
    ok = kl <= gates.max_kl
    return Check(name="kl", value=kl, threshold=gates.max_kl, passed=ok,
                 reason=f"KL(candidate || base) {kl:.4f} nats {'<=' if ok else '>'} {gates.max_kl}")


def decide(report: EvalReport, gates: GatesConfig) -> Decision:
    """Apply every gate (gain, rules, win-rate, KL, and the monitors when they block); passes only if all pass."""
    checks = [_gain_gate(report, gates), *_rule_gates(report, gates), _known_good_gate(report, gates),
              _win_rate_gate(report, gates), _kl_gate(report, gates)]
    if gates.block_on_monitors:
        flagged = [m.name for m in report.monitors if not m.passed]
        checks.append(Check(name="monitors", value=float(len(flagged)), threshold=0.0, passed=not flagged,
                            reason=f"flagged monitors: {', '.join(flagged) or 'none'}"))
    failed = [g for g in checks if not g.passed]
    reason = "all gates passed" if not failed else "failed: " + "; ".join(g.reason for g in failed)
    return Decision(passed=not failed, gates=checks, reason=reason)


# ---------------------------------------------------------------------------------------------------- report
def same_answer(a: str, b: str) -> bool:
    """Two answers are the same text up to whitespace."""
    return " ".join(a.split()) == " ".join(b.split())


def known_good_rate(answers: Sequence[str], references: Sequence[str | None], cfg: EvaluateConfig) -> Estimate | None:
    """Share (bootstrap CI) of the prompts with a known-good reference that ``answers`` reproduces."""
    hits = [float(same_answer(a, r)) for a, r in zip(answers, references) if r is not None]
    return bootstrap_mean_ci(hits, cfg.bootstrap_samples, cfg.seed) if hits else None


def build_report(responses: dict[str, list[str]], scores: dict[str, dict[str, list[float]]], kinds: dict[str, str],
                 measures: dict[str, dict[str, list[float] | None]], cfg: EvaluateConfig, prompts: list[list[dict]],
                 champion_version: int | None = None, win: WinRate | None = None,
                 references: Sequence[str | None] | None = None) -> EvalReport:
    """Per-role statistics, candidate - reference differences, monitors. Roles: candidate, base[, champion].

    ``references``: per prompt, an answer known to be good (feedback, golden set) or None."""
    reference = "champion" if "champion" in responses else "base"
    roles = {}
    for role, comps in scores.items():
        m = measures.get(role, {})
        lengths = m.get("length") or [float(len(c)) for c in responses[role]]
        roles[role] = role_stats(comps, kinds, lengths, m.get("kl"), m.get("entropy"), cfg)
        if references is not None:
            roles[role].known_good = known_good_rate(responses[role], references, cfg)
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
    total = cand.components.get(TOTAL)
    return {
        "n": report.n_prompts, "reference": report.reference, "champion_version": report.champion_version,
        "total": None if total is None else total.mean,
        "gain": None if d is None else d.mean, "gain_ci": None if d is None else [d.lo, d.hi],
        "kl": cand.kl.mean if cand.kl else None, "length": cand.length.mean,
        "win_rate": report.win_rate.rate if report.win_rate else None,
        "flags": [m.name for m in report.monitors if not m.passed], "passed": decision.passed,
    }


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion, in percent."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, 100 * (centre - half)), 2), round(min(100.0, 100 * (centre + half)), 2))
