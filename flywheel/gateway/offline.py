"""The canary decision from the durable logs: what the gateway captured and the feedback it stored, read back.

The live monitor keeps its request id → arm map in memory, so a restart forgets which arm answered the requests
whose labels arrive afterwards. This reads the same facts from the sink instead (``flywheel canary``): the gateway's
interaction rows (``gw-*`` objects, not shadow answers) whose ``model_version`` is the champion's or the
challenger's current version, and every feedback event of ``_feedback/`` (latest per request wins), then takes the
same decision (``monitor.decide``) and, with ``apply``, moves the aliases the same way (``monitor.apply_decision``).

Upstream errors are not captured as rows, so the error-rate guardrail is the live monitor's alone; latency and rule
guardrails and the KPI test work from the logs.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import orjson

from flywheel.config import redact_userinfo
from flywheel.config.data import SourceConfig
from flywheel.feedback import feedback_source
from flywheel.gateway.monitor import ArmStats, CanaryDecision, apply_decision, decide, kpi_value
from flywheel.gateway.routing import CHALLENGER, CHAMPION
from flywheel.logformats import jsonl_bytes
from flywheel.sources import log_partition, open_source


def _lines(source: SourceConfig, prefix: str, since: str | None):
    """Decoded JSON objects of the ``<prefix>*`` objects under ``dt=`` partitions on or after ``since``."""
    reader = open_source(source)
    try:
        refs = reader.list()
    except FileNotFoundError:
        return
    for ref in refs:
        day = log_partition(ref.key)
        if day is None or (since and day < since) or not PurePosixPath(ref.key).name.startswith(prefix):
            continue
        for line in jsonl_bytes(ref.key, reader.read(ref)).splitlines():
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


def arm_stats_from_logs(source: SourceConfig, labels: dict[str, str], kpi: str, since: str | None = None,
                        rules: list | None = None) -> dict[str, ArmStats]:
    """Per arm: requests, latencies, rule results and KPI labels of the rows answered by ``labels[arm]``."""
    arms = {CHAMPION: ArmStats(), CHALLENGER: ArmStats()}
    arm_of: dict[str, str] = {}
    for row in _lines(source, "gw-", since):
        meta = row.get("metadata") or {}
        arm = meta.get("arm")
        if arm not in arms or meta.get("shadow") or row.get("model_version") != labels.get(arm):
            continue
        stats = arms[arm]
        stats.requests += 1
        if isinstance(row.get("latency_ms"), int):
            stats.latencies.append(float(row["latency_ms"]))
        if rules:
            stats.rule_checked += 1
            ok = all(rule([row.get("messages") or []], [str(row.get("completion") or "")])[0] >= 0.5 for rule in rules)
            stats.rule_failures += not ok
        arm_of[str(row.get("request_id"))] = arm
    latest: dict[str, tuple] = {}
    for event in _lines(feedback_source(source), "fb-", since):
        rid = str(event.get("request_id"))
        value = kpi_value(event, kpi)
        if rid in arm_of and value is not None:
            order = (str(event.get("timestamp") or ""), str(event.get("received_at") or ""), str(event.get("event_id")))
            if rid not in latest or order >= latest[rid][0]:
                latest[rid] = (order, value)
    for rid, (_, value) in latest.items():
        stats = arms[arm_of[rid]]
        stats.labelled += 1
        stats.successes += value
    return arms


def decide_from_logs(cfg, *, apply: bool = False, since: str | None = None) -> CanaryDecision | None:
    """The decision on everything the sink holds for the current champion and challenger (None: no challenger)."""
    from flywheel.gateway.aliases import AliasView
    from flywheel.registry import Registry
    from flywheel.rewards.rules import build_rule

    aliases = AliasView.from_config(cfg)
    if aliases.tracking_uri is None:
        raise ValueError(f"registry: no MLflow store at {cfg.state}/mlflow.db and no registry.tracking_uri")
    aliases.refresh()
    if aliases.error:
        raise RuntimeError(f"registry {redact_userinfo(aliases.tracking_uri)}: {redact_userinfo(aliases.error)}")
    if not aliases.challenger_live:  # no challenger, or it is the champion
        return None
    gw = cfg.gateway
    source = cfg.source if gw.capture.sink is None else cfg.source.model_copy(update={"uri": gw.capture.sink})
    rules = [build_rule(params, f"gateway.monitor.rules[{i}]") for i, params in enumerate(gw.monitor.rules)]
    arms = arm_stats_from_logs(source, {arm: aliases.label(arm) for arm in (CHAMPION, CHALLENGER)}, gw.monitor.kpi,
                               since, rules)
    decision = decide(arms[CHAMPION], arms[CHALLENGER], gw.monitor, dict(aliases.versions))
    if apply and decision.decision != "keep":
        decision = apply_decision(Registry.from_config(cfg), decision)
    path = Path(cfg.state) / "gateway" / "decisions.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(orjson.dumps({**decision.model_dump(mode="json"), "from": "logs"}) + b"\n")
    return decision
