"""Live champion vs challenger: an always-valid sequential test on a Bernoulli KPI, guardrails, and the decision.

**The test** is the mixture SPRT of Johari, Pekelis & Walsh ("Always valid inference", 2017) on the difference
``θ = p_challenger − p_champion`` of the KPI's success rates, with the normal approximation and a N(0, τ²) mixture
(``monitor.mixture_sd`` = τ). With θ̂ the observed difference and V its variance (p̂(1−p̂)/n per arm, summed)::

    Λ = sqrt(V / (V + τ²)) · exp(θ̂² τ² / (2 V (V + τ²)))

Under H0 (θ = 0) Λ is a non-negative martingale, so rejecting when Λ ≥ 1/α keeps the type-I error ≤ α however
often one looks (Ville's inequality): the monitor may check after every feedback event. The matching confidence
sequence is θ̂ ± sqrt(V (V + τ²) / τ² · (2 log(1/α) + log((V + τ²) / V))).

**The decision** (``decide``), in order: guardrails (challenger error rate, latency p95 ratio to the champion, rule
failure rate, once both arms have ``guardrail_min_requests``) roll back; fewer than ``min_samples`` labelled
requests per arm keep the canary; Λ ≥ 1/α promotes (θ̂ > 0) or rolls back (θ̂ < 0); at ``horizon_samples``
labelled requests per arm a tie becomes ``on_horizon``; otherwise keep. The record says each check's number,
threshold and outcome, like the offline gates.

**Applying it** (``apply_decision``) goes through the registry under its lock: promote = ``previous`` ← champion,
``champion`` ← challenger (the registry's own order), the ``challenger`` alias removed (the canary is over);
rollback = the ``challenger`` alias removed (the champion keeps serving). Either refuses, as ``stale``, when the
aliases moved since the numbers were gathered. The version gets ``canary_decision`` / ``canary_reason`` /
``canary_stats`` tags, and every decision is a line of ``<state>/gateway/decisions.jsonl``.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel

from flywheel.config.gateway import MonitorConfig
from flywheel.gateway.routing import CHALLENGER, CHAMPION
from flywheel.gateway.rows import now_iso
from flywheel.records import Check

_TAG_MAX = 4900
MAX_TRACKED = 1_000_000  # request ids remembered for the feedback join (oldest forgotten first)


@dataclass
class ArmStats:
    """What one arm did: answers, errors, latencies, and the KPI of its labelled requests."""

    requests: int = 0
    errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=20_000))
    labelled: int = 0
    successes: float = 0.0
    rule_checked: int = 0
    rule_failures: int = 0

    @property
    def rate(self) -> float:
        return self.successes / self.labelled if self.labelled else float("nan")

    def p95(self) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(math.ceil(0.95 * len(ordered))) - 1)]


def msprt(champion: ArmStats, challenger: ArmStats, tau: float, alpha: float) -> tuple[float, float, float]:
    """(Λ, θ̂, half-width of the always-valid (1 − α) interval) for θ = p_challenger − p_champion.

    >>> a, b = ArmStats(labelled=1000, successes=500), ArmStats(labelled=1000, successes=600)
    >>> lam, diff, half = msprt(a, b, 0.1, 0.05)
    >>> lam > 20, round(diff, 2), diff - half > 0
    (True, 0.1, True)
    """
    n_a, n_b = champion.labelled, challenger.labelled
    if n_a == 0 or n_b == 0:
        return 1.0, float("nan"), float("inf")
    p_a, p_b = champion.successes / n_a, challenger.successes / n_b
    # a floor on each arm's variance: an arm at 0 % or 100 % so far is not yet certain
    var = max(p_a * (1 - p_a), 0.25 / n_a) / n_a + max(p_b * (1 - p_b), 0.25 / n_b) / n_b
    diff, t2 = p_b - p_a, tau * tau
    log_lam = 0.5 * math.log(var / (var + t2)) + diff * diff * t2 / (2 * var * (var + t2))
    half = math.sqrt(var * (var + t2) / t2 * (2 * math.log(1 / alpha) + math.log((var + t2) / var)))
    return math.exp(min(log_lam, 700.0)), diff, half


class CanaryDecision(BaseModel):
    """One look at the canary: promote | keep | rollback, each check, and what applying it did."""

    decision: Literal["promote", "keep", "rollback"]
    reason: str
    checks: list[Check]
    champion_version: int | None = None
    challenger_version: int | None = None
    stats: dict = {}
    at: str = ""
    applied: str = "no"  # no | promoted | rolled_back | stale | recorded
    serving: str = ""  # after a promotion: what the upstream's champion name now serves (``on_applied``)


def _arm_summary(arm: ArmStats) -> dict:
    return {"requests": arm.requests, "errors": arm.errors, "labelled": arm.labelled,
            "kpi_rate": None if not arm.labelled else round(arm.rate, 4),
            "latency_p95_ms": None if not arm.latencies else round(arm.p95(), 1),
            "rule_failures": arm.rule_failures, "rule_checked": arm.rule_checked}


def guardrails(champion: ArmStats, challenger: ArmStats, cfg: MonitorConfig) -> list[Check]:
    """Error rate, latency p95 ratio and rule failure rate of the challenger (empty until both arms are big)."""
    if min(champion.requests, challenger.requests) < cfg.guardrail_min_requests:
        return []
    checks = []
    err = challenger.errors / challenger.requests
    checks.append(Check(name="error_rate", value=round(err, 4), threshold=cfg.max_error_rate,
                        passed=err <= cfg.max_error_rate,
                        reason=f"challenger error rate {err:.2%} vs max {cfg.max_error_rate:.2%}"))
    p95_a, p95_b = champion.p95(), challenger.p95()
    if p95_a == p95_a and p95_b == p95_b and p95_a > 0:
        ratio = p95_b / p95_a
        checks.append(Check(name="latency_p95", value=round(ratio, 3), threshold=cfg.max_latency_p95_ratio,
                            passed=ratio <= cfg.max_latency_p95_ratio,
                            reason=f"latency p95 {p95_b:.0f} ms vs champion {p95_a:.0f} ms (x{ratio:.2f}, "
                                   f"max x{cfg.max_latency_p95_ratio})"))
    if challenger.rule_checked:
        rate = challenger.rule_failures / challenger.rule_checked
        checks.append(Check(name="rule_failures", value=round(rate, 4), threshold=cfg.max_rule_failure_rate,
                            passed=rate <= cfg.max_rule_failure_rate,
                            reason=f"{challenger.rule_failures} of {challenger.rule_checked} challenger answers "
                                   f"failed a rule ({rate:.2%}, max {cfg.max_rule_failure_rate:.2%})"))
    return checks


def decide(champion: ArmStats, challenger: ArmStats, cfg: MonitorConfig, versions: dict | None = None
           ) -> CanaryDecision:
    """The decision on the numbers so far (see the module docstring for the order)."""
    versions = versions or {}
    base = {"champion_version": versions.get(CHAMPION), "challenger_version": versions.get(CHALLENGER),
            "at": now_iso()}
    checks = guardrails(champion, challenger, cfg)
    lam, diff, half = msprt(champion, challenger, cfg.mixture_sd, cfg.alpha)
    n = min(champion.labelled, challenger.labelled)
    stats = {"champion": _arm_summary(champion), "challenger": _arm_summary(challenger), "kpi": cfg.kpi,
             "msprt_lambda": round(lam, 4), "threshold": round(1 / cfg.alpha, 4),
             "diff": None if diff != diff else round(diff, 4),
             "ci": None if diff != diff else [round(diff - half, 4), round(diff + half, 4)]}
    failed = [c for c in checks if not c.passed]
    if failed:
        return CanaryDecision(decision="rollback", reason="guardrail: " + "; ".join(c.reason for c in failed),
                              checks=checks, stats=stats, **base)
    test = Check(name="msprt", value=round(lam, 4), threshold=round(1 / cfg.alpha, 4), passed=lam < 1 / cfg.alpha,
                 reason=f"{cfg.kpi}: challenger {challenger.rate:.3f} vs champion {champion.rate:.3f} over "
                        f"{challenger.labelled}/{champion.labelled} labelled requests, diff {diff:+.3f} "
                        f"(always-valid {1 - cfg.alpha:.0%} CI [{diff - half:+.3f}, {diff + half:+.3f}]), "
                        f"Λ {lam:.2f} vs 1/α {1 / cfg.alpha:.0f}")
    checks.append(test)
    if n < cfg.min_samples:
        return CanaryDecision(decision="keep", reason=f"collecting: {n} of {cfg.min_samples} labelled requests "
                              "per arm", checks=checks, stats=stats, **base)
    if lam >= 1 / cfg.alpha:
        verdict = "promote" if diff > 0 else "rollback"
        word = "better" if diff > 0 else "worse"
        return CanaryDecision(decision=verdict, reason=f"challenger significantly {word}: {test.reason}",
                              checks=checks, stats=stats, **base)
    if n >= cfg.horizon_samples:
        verdict = {"keep": "keep", "promote": "promote", "rollback": "rollback"}[cfg.on_horizon]
        return CanaryDecision(decision=verdict, reason=f"horizon reached ({n} >= {cfg.horizon_samples} labelled "
                              f"requests per arm) without a significant difference: on_horizon={cfg.on_horizon}; "
                              f"{test.reason}", checks=checks, stats=stats, **base)
    return CanaryDecision(decision="keep", reason=f"no significant difference yet: {test.reason}", checks=checks,
                          stats=stats, **base)


def apply_decision(registry, decision: CanaryDecision) -> CanaryDecision:
    """Move the registry's aliases as ``decision`` says, under the registry's lock; returns it with ``applied``."""
    from flywheel.registry import PREVIOUS, alias_version, registry_lock

    if decision.decision == "keep":
        return decision.model_copy(update={"applied": "recorded"})
    client, name = registry.client, registry.model_name
    with registry_lock(registry.state_dir, name, registry.lock_timeout_s):
        champ, chall = alias_version(client, name, CHAMPION), alias_version(client, name, CHALLENGER)
        if (champ, chall) != (decision.champion_version, decision.challenger_version) or chall is None:
            return decision.model_copy(update={"applied": "stale", "reason": decision.reason + f" (not applied: "
                                       f"aliases moved to champion v{champ}, challenger v{chall})"})
        if decision.decision == "promote":
            if champ is not None:
                client.set_registered_model_alias(name, PREVIOUS, str(champ))
            client.set_registered_model_alias(name, CHAMPION, str(chall))
        client.delete_registered_model_alias(name, CHALLENGER)
        applied = "promoted" if decision.decision == "promote" else "rolled_back"
        for key, value in (("canary_decision", applied), ("canary_reason", decision.reason),
                           ("canary_stats", orjson.dumps(decision.stats).decode()), ("canary_at", decision.at)):
            client.set_model_version_tag(name, str(chall), key, value[:_TAG_MAX])
    return decision.model_copy(update={"applied": applied})


def kpi_value(event: dict, kpi: str) -> float | None:
    """1 (good) / 0 (bad) / None (no label) of a feedback event for ``kpi``.

    >>> kpi_value({"resolved": True}, "resolved"), kpi_value({"thumbs": -1}, "thumbs"), kpi_value({}, "resolved")
    (1.0, 0.0, None)
    >>> kpi_value({"escalated": True}, "escalated"), kpi_value({"kpi": {"converted": 1}}, "converted")
    (0.0, 1.0)
    """
    value = event.get(kpi, (event.get("kpi") or {}).get(kpi))
    if value is None:
        return None
    if kpi == "thumbs":
        return None if value == 0 else float(value > 0)
    if kpi in ("escalated", "edited"):  # a human had to step in: bad
        return 0.0 if value else 1.0
    return float(bool(value)) if isinstance(value, bool) else min(1.0, max(0.0, float(value)))


class LiveMonitor:
    """The gateway's running comparison: answers and feedback per arm, looked at every ``check_every_s``.

    Feedback joins its answer by request id (the last ``MAX_TRACKED`` answers are remembered); a later event for
    the same request replaces its earlier KPI value (latest wins). A new challenger version starts from zero.
    """

    def __init__(self, cfg: MonitorConfig, registry=None, decisions_path: str | Path | None = None,
                 check_every_s: float = 10.0):
        self.cfg, self.registry, self.check_every_s = cfg, registry, check_every_s
        self.decisions_path = Path(decisions_path) if decisions_path else None
        self.versions_fn = lambda: {}
        self.on_applied = None  # fn(decision) -> str, run after a promotion was applied (state.reload_champion)
        self.last: CanaryDecision | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._epoch: tuple | None = None
        self.reset()

    def reset(self) -> None:
        self.arms = {CHAMPION: ArmStats(), CHALLENGER: ArmStats()}
        self.arm_of: OrderedDict[str, str] = OrderedDict()
        self.value_of: dict[str, float] = {}

    def record_answer(self, request_id: str | None, arm: str, latency_ms: float, error: bool,
                      rule_ok: bool | None = None) -> None:
        with self._lock:
            stats = self.arms[arm]
            stats.requests += 1
            stats.errors += bool(error)
            if not error:
                stats.latencies.append(latency_ms)
            if rule_ok is not None:
                stats.rule_checked += 1
                stats.rule_failures += not rule_ok
            if request_id is not None:
                self.arm_of[request_id] = arm
                if len(self.arm_of) > MAX_TRACKED:
                    old, _ = self.arm_of.popitem(last=False)
                    self.value_of.pop(old, None)

    def record_feedback(self, event: dict) -> None:
        value = kpi_value(event, self.cfg.kpi)
        with self._lock:
            arm = self.arm_of.get(event["request_id"])
            if value is None or arm is None:
                return
            stats = self.arms[arm]
            old = self.value_of.get(event["request_id"])
            if old is None:
                stats.labelled += 1
            else:
                stats.successes -= old
            stats.successes += value
            self.value_of[event["request_id"]] = value

    def check(self) -> CanaryDecision | None:
        """Decide on the numbers so far and apply it (``monitor.apply``); None while there is no challenger."""
        versions = self.versions_fn()
        epoch = (versions.get(CHAMPION), versions.get(CHALLENGER))
        if epoch != self._epoch:  # a new challenger (or champion): a new comparison
            with self._lock:
                self.reset()
            self._epoch = epoch
        if versions and versions.get(CHALLENGER) in (None, versions.get(CHAMPION)):
            return None  # no canary: no challenger, or it is the champion (e.g. the day-0 release)
        with self._lock:
            decision = decide(self.arms[CHAMPION], self.arms[CHALLENGER], self.cfg, versions)
        if self.cfg.apply and self.registry is not None and decision.decision != "keep":
            decision = apply_decision(self.registry, decision)
            if self.on_applied is not None and decision.applied == "promoted":
                decision = decision.model_copy(update={"serving": self.on_applied(decision)})
        self._record(decision)
        self.last = decision
        return decision

    def _record(self, decision: CanaryDecision) -> None:
        if self.decisions_path is None:
            return
        if decision.decision == "keep" and self.last is not None and self.last.decision == "keep":
            return  # one line per change, not one per look
        self.decisions_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.decisions_path, "ab") as f:
            f.write(orjson.dumps(decision.model_dump(mode="json")) + b"\n")

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.check_every_s):
                with contextlib.suppress(Exception):  # a registry hiccup: look again next time
                    self.check()

        threading.Thread(target=loop, name="canary-monitor", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def render_metrics(self) -> str:
        out = ["# TYPE flywheel_gateway_canary_labelled gauge"]
        for arm, stats in self.arms.items():
            out.append(f'flywheel_gateway_canary_labelled{{arm="{arm}"}} {stats.labelled}')
            out.append(f'flywheel_gateway_canary_kpi_successes{{arm="{arm}"}} {stats.successes}')
        if self.last is not None:
            out.append(f"flywheel_gateway_canary_msprt_lambda {self.last.stats.get('msprt_lambda', 0)}")
        return "\n".join(out) + "\n"
