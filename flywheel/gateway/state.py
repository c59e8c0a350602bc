"""The gateway's shared parts: WALs and sink, router, alias view, monitor and metrics, built from the config.

``build_gateway(cfg)`` makes them (nothing started); ``flywheel.gateway.app.create_app`` starts and stops them in
its lifespan and hands the ``Gateway`` to every route.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson
from starlette.requests import Request

from flywheel.gateway.aliases import AliasView
from flywheel.gateway.capture import Capture, open_sink
from flywheel.gateway.metrics import Metrics
from flywheel.gateway.routing import CHALLENGER, Router
from flywheel.gateway.rows import day_of_event
from flywheel.gateway.upstream import Upstream

FEEDBACK_PREFIX = "_feedback/"  # under the sink: a "_" folder, so observe never takes events for interactions


@dataclass
class Gateway:
    """Everything the routes share; built by ``create_app``, started and stopped by its lifespan."""

    cfg: object  # FlywheelConfig
    capture: Capture
    feedback: Capture
    router: Router
    aliases: AliasView
    monitor: object | None = None  # flywheel.gateway.monitor.LiveMonitor
    metrics: Metrics = field(default_factory=Metrics)
    client: Upstream | None = None
    capture_failures: int = 0
    rules: list = field(default_factory=list)  # gateway.monitor.rules, built: fn(prompts, completions) -> scores
    _tasks: set = field(default_factory=set)

    @property
    def gw(self):
        return self.cfg.gateway

    def upstream_model(self, arm: str) -> str:
        return self.gw.routing.challenger_model if arm == CHALLENGER else self.gw.routing.champion_model

    def upstream_headers(self, request: Request) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        key = self.gw.upstream_api_key.get_secret_value()
        auth = f"Bearer {key}" if key else request.headers.get("authorization")
        if auth:
            headers["authorization"] = auth
        return headers

    def task_of(self, request: Request) -> str:
        return request.headers.get("x-flywheel-task") or self.gw.capture.task or self.cfg.project.name

    def accept(self, row: dict) -> bool:
        """Append ``row`` to the WAL; False (and counted) when the disk refused it."""
        try:
            self.capture.append(row)
            return True
        except OSError:
            self.capture_failures += 1
            return False

    def answered(self, arm: str, status: int, latency_ms: float, request_id: str | None,
                 row: dict | None = None) -> None:
        version = self.aliases.label(arm)
        self.metrics.observe(arm, version, status, latency_ms)
        error = status >= 500
        if error:
            self.metrics.error(arm, version)
        if self.monitor is not None:
            rule_ok = None
            if self.rules and row is not None:
                rule_ok = all(rule([row["messages"]], [row["completion"]])[0] >= 0.5 for rule in self.rules)
            self.monitor.record_answer(request_id, arm, latency_ms, error, rule_ok)


def scrubber(extra_patterns: dict[str, str]):
    """PII scrubbing of captured rows' messages and completion (the writer thread's transform)."""
    import pyarrow as pa

    from flywheel import pii

    def scrub_rows(rows: list[dict]) -> list[dict]:
        table = pa.table({"messages": [orjson.dumps(r["messages"]).decode() for r in rows],
                          "completion": [r["completion"] for r in rows]})
        table, _ = pii.scrub(table, extra_patterns, columns=("messages", "completion"))
        for row, messages, completion in zip(rows, table["messages"].to_pylist(), table["completion"].to_pylist()):
            row["messages"], row["completion"] = orjson.loads(messages), completion
        return rows

    return scrub_rows


def build_gateway(cfg, monitor=None) -> Gateway:
    """The gateway's parts from the config: WALs and sink, router, alias view (nothing started yet)."""
    from flywheel.rewards.rules import build_rule

    gw = cfg.gateway
    rules = [build_rule(params, f"gateway.monitor.rules[{i}]") for i, params in enumerate(gw.monitor.rules)]
    cap = gw.capture
    wal = Path(cap.wal_dir) if cap.wal_dir else Path(cfg.state) / "gateway" / "wal"
    uri = cap.sink or cfg.source.uri
    s3 = cfg.source.s3
    sink = open_sink(uri, s3.endpoint_url, s3.region, s3.profile)
    sizes = {"max_rows": cap.max_rows, "max_bytes": cap.max_bytes, "max_seconds": cap.max_seconds, "fsync": cap.fsync}
    transform = scrubber(cfg.validation.pii.extra_patterns) if cap.scrub_pii else None
    interactions = Capture(wal, sink, stream="gw", transform=transform, **sizes)
    feedback = Capture(wal, sink, stream="fb", prefix=FEEDBACK_PREFIX, day_of=day_of_event, **sizes)
    router = Router(mode=gw.routing.mode, share=gw.routing.challenger_share, salt=gw.routing.salt)
    aliases = AliasView.from_config(cfg)
    if monitor is None and gw.routing.mode == "canary":
        monitor = live_monitor(cfg, aliases)
    return Gateway(cfg=cfg, capture=interactions, feedback=feedback, router=router, aliases=aliases,
                   monitor=monitor, rules=rules)


def live_monitor(cfg, aliases: AliasView):
    """The canary monitor; it applies decisions to the registry only when the gateway sees one."""
    from flywheel.gateway.monitor import LiveMonitor

    registry = None
    if aliases.tracking_uri is not None:
        from flywheel.registry import Registry

        registry = Registry.from_config(cfg)
    monitor = LiveMonitor(cfg.gateway.monitor, registry, Path(cfg.state) / "gateway" / "decisions.jsonl",
                          cfg.gateway.monitor.check_every_s)
    monitor.versions_fn = (lambda: dict(aliases.versions)) if registry is not None else dict
    if registry is not None:
        monitor.on_applied = reload_champion(cfg, registry)
    return monitor


def reload_champion(cfg, registry):
    """After a promotion: point the upstream's champion name at the promoted version's adapter (vLLM's
    ``/v1/load_lora_adapter``, in place), as the deploy stage would have; returns what it did, for the record.

    The challenger's adapter passed its deploy smoke test when it was loaded as the challenger, so the same weights
    are not tested again. An upstream that cannot load adapters (a hosted API, a replay server) is said so; the
    next night's deploy stage loads the champion then (it deploys when the server serves another version).
    """
    def reload(decision) -> str:
        from flywheel.serving import load_adapter, read_server_info, served_models, write_server_info

        base = cfg.gateway.upstream_url.removesuffix("/v1")
        name, version = cfg.gateway.routing.champion_model, decision.challenger_version
        try:
            _, local = registry.fetch(version)
            load_adapter(base, name, local, inplace=name in served_models(base))
        except Exception as e:  # noqa: BLE001 - the promotion stands; serving catches up at the next deploy
            return f"'{name}' not reloaded with v{version}: {type(e).__name__}: {e}"[:500]
        info = read_server_info(cfg.state)
        if info is not None and info.url == base:
            info.champion_version = version
            info.challenger_version = None if info.challenger_version == version else info.challenger_version
            write_server_info(info, cfg.state)
        return f"'{name}' reloaded with v{version} at {base}"

    return reload
