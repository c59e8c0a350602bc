"""Champion / challenger: a sticky 20 % canary, shadow mode, and the monitor's decisions on a real registry.

The upstream is ``gateway_upstream.StubUpstream`` (its answer depends on the model it is asked for), the gateway a
real uvicorn server in a thread, the registry MLflow on SQLite under the test's state dir.
"""
from __future__ import annotations

import collections
import json
import random
import time

import httpx
import pytest
import yaml
from gateway_upstream import ServerThread
from test_gateway_capture import CHAT, sink_rows

from flywheel.gateway.app import create_app
from flywheel.gateway.monitor import ArmStats, LiveMonitor, decide, msprt
from flywheel.gateway.routing import Router


def test_router_share_is_sticky_and_growing_it_only_adds_keys():
    keys = [f"user-{i}" for i in range(2000)]
    router = Router(mode="canary", share=0.2)
    arms = {k: router.arm(k) for k in keys}
    share = sum(a == "challenger" for a in arms.values()) / len(keys)
    assert 0.17 <= share <= 0.23, share
    assert all(router.arm(k) == arm for k, arm in arms.items())  # sticky
    wider = Router(mode="canary", share=0.3)
    assert all(wider.arm(k) == "challenger" for k, a in arms.items() if a == "challenger")
    assert Router(mode="canary", share=0.2, challenger_live=False).arm(keys[0]) == "champion"


def test_a_20_percent_canary_through_the_gateway(stub, make_cfg, tmp_path):
    stub.answers["challenger"] = "from the challenger"
    cfg = make_cfg(stub.url, **{"gateway.routing.mode": "canary", "gateway.routing.challenger_share": 0.2})
    seen: dict[str, set] = collections.defaultdict(set)
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        for i in range(2000):  # 1,000 users, two requests each
            user = f"user-{i % 1000}"
            r = client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT},
                            headers={"x-user-id": user})
            seen[user].add(r.json()["choices"][0]["message"]["content"])
    models = collections.Counter(req["model"] for req in stub.requests)
    assert sum(models.values()) == 2000
    assert 0.17 <= models["challenger"] / 2000 <= 0.23, models
    assert all(len(answers) == 1 for answers in seen.values()), "a user saw both arms"
    rows = sink_rows(tmp_path / "logs")
    assert len(rows) == 2000
    arms = collections.Counter((r["metadata"]["arm"], r["model_version"]) for r in rows)
    assert set(arms) == {("champion", "support-bot@champion"), ("challenger", "support-bot@challenger")}


def test_shadow_mode_logs_the_challenger_and_never_shows_it(stub, make_cfg, tmp_path):
    stub.answers["challenger"] = "shadow answer"
    cfg = make_cfg(stub.url, **{"gateway.routing.mode": "shadow", "gateway.routing.challenger_share": 1.0})
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        receipts = []
        for i in range(5):
            r = client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT},
                            headers={"x-user-id": str(i)})
            assert r.json()["choices"][0]["message"]["content"] != "shadow answer"
            receipts.append(r.headers["x-request-id"])
        deadline = time.monotonic() + 10
        while sum(req["model"] == "challenger" for req in stub.requests) < 5:
            assert time.monotonic() < deadline, "shadow calls did not happen"
            time.sleep(0.02)
    rows = {r["request_id"]: r for r in sink_rows(tmp_path / "logs")}
    for rid in receipts:
        assert rows[rid]["metadata"]["arm"] == "champion"
        shadow = rows[f"{rid}-shadow"]
        assert shadow["completion"] == "shadow answer" and shadow["metadata"]["shadow_of"] == rid
        assert shadow["model_version"] == "support-bot@challenger"


# ---------------------------------------------------------------------------------------------------- monitor
def bernoulli(stats: ArmStats, n: int, p: float, rng: random.Random) -> None:
    for _ in range(n):
        stats.requests += 1
        stats.latencies.append(100.0)
        stats.labelled += 1
        stats.successes += rng.random() < p


def test_msprt_keeps_its_type_one_error_at_every_look():
    """Under H0, looking after every 20 labels up to 2,000 per arm, fewer than alpha of the runs ever reject."""
    rng, rejected = random.Random(0), 0
    for _ in range(200):
        a, b = ArmStats(), ArmStats()
        for _ in range(100):
            bernoulli(a, 20, 0.6, rng)
            bernoulli(b, 20, 0.6, rng)
            if msprt(a, b, 0.1, 0.05)[0] >= 20:
                rejected += 1
                break
    assert rejected / 200 <= 0.05, rejected


def fake_adapter(folder):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (folder / "adapter_model.safetensors").write_bytes(b"not really weights")
    return folder


@pytest.fixture
def registry(make_cfg, tmp_path):
    """A real MLflow registry (SQLite) with v1 champion; ``registry.challenger(path)`` registers a challenger."""
    from flywheel.records import Lineage
    from flywheel.registry import Registry

    cfg = make_cfg("http://127.0.0.1:9/v1")
    reg = Registry.from_config(cfg)
    versions = iter(range(1, 100))

    def add(passed: bool):
        folder = fake_adapter(tmp_path / f"adapter-{next(versions)}")
        return reg.release(folder, passed=passed, reason="test", evaluated_champion=reg.version_of("champion"),
                           lineage=Lineage())

    add(True)
    reg.challenger = lambda: add(False)
    reg.cfg = cfg
    return reg


def monitor_for(registry, **overrides) -> LiveMonitor:
    from flywheel.config.gateway import MonitorConfig

    cfg = MonitorConfig(min_samples=50, horizon_samples=600, **overrides)
    monitor = LiveMonitor(cfg, registry, registry.state_dir / "gateway" / "decisions.jsonl")
    monitor.versions_fn = lambda: {"champion": registry.version_of("champion"),
                                   "challenger": registry.version_of("challenger")}
    return monitor


def run_canary(monitor: LiveMonitor, p_champion: float, p_challenger: float, seed: int, batches: int = 40):
    """Feed 20 labelled requests per arm at a time through the monitor's own API until it decides."""
    rng = random.Random(seed)
    monitor.check()  # a new challenger: the comparison starts from zero
    for batch in range(batches):
        for arm, p in (("champion", p_champion), ("challenger", p_challenger)):
            for i in range(20):
                rid = f"{seed}-{batch}-{arm}-{i}"
                monitor.record_answer(rid, arm, 100.0, error=False)
                monitor.record_feedback({"request_id": rid, "resolved": rng.random() < p})
        decision = monitor.check()
        if decision.decision != "keep":
            return decision, batch
    return decision, batches


def test_monitor_rolls_back_worse_promotes_better_and_keeps_a_tie_until_the_horizon(registry):
    state = registry.state()
    assert state["aliases"]["champion"] == 1

    # a worse challenger: rolled back, champion untouched
    registry.challenger()
    monitor = monitor_for(registry)
    decision, _ = run_canary(monitor, 0.7, 0.45, seed=1)
    assert (decision.decision, decision.applied) == ("rollback", "rolled_back"), decision.reason
    assert registry.version_of("challenger") is None and registry.version_of("champion") == 1
    assert registry.tags(2)["canary_decision"] == "rolled_back"

    # a better one: promoted through the registry (previous = the old champion)
    registry.challenger()
    decision, _ = run_canary(monitor, 0.45, 0.7, seed=2)
    assert (decision.decision, decision.applied) == ("promote", "promoted"), decision.reason
    assert registry.version_of("champion") == 3 and registry.version_of("previous") == 1
    assert registry.version_of("challenger") is None
    assert registry.tags(3)["canary_decision"] == "promoted" and "significantly better" in registry.tags(3)[
        "canary_reason"]

    # a tie: kept as a canary at every look before the horizon, then decided by on_horizon (rollback)
    registry.challenger()
    decision, batch = run_canary(monitor, 0.6, 0.6, seed=3)
    assert decision.decision == "rollback" and "horizon reached" in decision.reason
    assert batch == 600 // 20 - 1, "decided before the horizon"
    assert registry.version_of("champion") == 3 and registry.version_of("challenger") is None

    lines = [json.loads(x) for x in (registry.state_dir / "gateway" / "decisions.jsonl").read_text().splitlines()]
    assert [x["applied"] for x in lines if x["decision"] != "keep"] == ["rolled_back", "promoted", "rolled_back"]


def test_guardrails_roll_back_a_failing_or_slow_challenger():
    from flywheel.config.gateway import MonitorConfig

    cfg = MonitorConfig(guardrail_min_requests=50)
    champion, challenger = ArmStats(), ArmStats()
    for _ in range(100):
        champion.requests += 1
        champion.latencies.append(100.0)
        challenger.requests += 1
        challenger.latencies.append(120.0)
    assert decide(champion, challenger, cfg).decision == "keep"
    challenger.errors = 10
    decision = decide(champion, challenger, cfg)
    assert decision.decision == "rollback" and "error rate 10.00%" in decision.reason
    challenger.errors = 0
    challenger.latencies.extend([400.0] * 20)
    assert "latency p95" in decide(champion, challenger, cfg).reason


def test_the_gateway_rolls_back_a_worse_challenger_by_itself(registry, stub):
    """End to end: live traffic and feedback through the gateway, the monitor deciding and moving the aliases."""
    from flywheel.config import load_config

    registry.challenger()
    stub.answers["challenger"] = "worse answer"
    cfg = load_config(None, {
        "project.state_dir": str(registry.state_dir), "source.uri": registry.cfg.source.uri,
        "gateway.upstream_url": stub.url, "gateway.routing.mode": "canary", "gateway.routing.challenger_share": 0.5,
        "gateway.routing.registry_refresh_s": 0.2, "gateway.monitor.check_every_s": 0.2,
        "gateway.monitor.min_samples": 40,
        # the stub answers in about a millisecond: on a busy machine its p95 ratio is noise, not the challenger
        "gateway.monitor.max_latency_p95_ratio": 1000})
    rng = random.Random(4)
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        send_until_decided(client, registry, rng, "worse answer", resolved_if_marked=0.3, resolved_else=0.8)
        # once rolled back, every new request goes to the champion
        deadline = time.monotonic() + 10
        while client.get("/health").json()["routing"]["challenger_live"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = len(stub.requests)
        for i in range(50):
            client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT}, headers={"x-user-id": str(i)})
        assert {req["model"] for req in stub.requests[before:]} == {"champion"}
    assert registry.version_of("champion") == 1
    assert registry.tags(2)["canary_decision"] == "rolled_back"
    assert registry.tags(2)["canary_reason"].startswith("challenger significantly worse"), registry.tags(2)


def test_a_challenger_breaking_a_rule_is_rolled_back_before_any_feedback(registry, stub):
    """The rule guardrail on live answers (gateway.monitor.rules): no KPI label needed."""
    from flywheel.config import load_config

    registry.challenger()
    stub.answers["challenger"] = "Sure! Your refund is on its way."  # not the JSON the rule asks for
    cfg = load_config(None, {
        "project.state_dir": str(registry.state_dir), "source.uri": registry.cfg.source.uri,
        "gateway.upstream_url": stub.url, "gateway.routing.mode": "canary", "gateway.routing.challenger_share": 0.5,
        "gateway.routing.registry_refresh_s": 0.2, "gateway.monitor.check_every_s": 0.2,
        "gateway.monitor.guardrail_min_requests": 30, "gateway.monitor.rules": [{"check": "json_valid"}]})
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        user, deadline = 0, time.monotonic() + 60
        while registry.version_of("challenger") is not None:
            assert time.monotonic() < deadline, "the guardrail never tripped"
            user += 1
            client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT},
                        headers={"x-user-id": f"u{user}"})
    tags = registry.tags(2)
    assert tags["canary_decision"] == "rolled_back" and "guardrail" in tags["canary_reason"]
    assert "failed a rule" in tags["canary_reason"]


def test_a_bad_rule_in_the_config_names_its_key(make_cfg):
    cfg = make_cfg("http://127.0.0.1:9/v1", **{"gateway.monitor.rules": [{"check": "no_such_rule"}]})
    with pytest.raises(ValueError, match=r"gateway\.monitor\.rules\[0\]\.check"):
        create_app(cfg)


def test_flywheel_canary_decides_from_the_durable_logs_after_the_gateway_is_gone(registry, stub):
    """The live monitor's memory dies with the gateway; ``flywheel canary`` reads the same facts from the sink."""
    from typer.testing import CliRunner

    from flywheel.cli import app
    from flywheel.config import load_config

    registry.challenger()
    stub.answers["challenger"] = "worse answer"
    overrides = {"project.state_dir": str(registry.state_dir), "source.uri": registry.cfg.source.uri,
                 "gateway.upstream_url": stub.url, "gateway.routing.mode": "canary",
                 "gateway.routing.challenger_share": 0.5, "gateway.monitor.apply": False,
                 "gateway.monitor.min_samples": 40}
    rng = random.Random(5)
    with ServerThread(create_app(load_config(None, overrides))) as gw, \
            httpx.Client(base_url=gw.url, timeout=30) as client:
        events = []
        for user in range(400):
            r = client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT},
                            headers={"x-user-id": f"u{user}"})
            worse = r.json()["choices"][0]["message"]["content"] == "worse answer"
            events.append({"request_id": r.headers["x-request-id"],
                           "resolved": rng.random() < (0.3 if worse else 0.8)})
        for i in range(0, len(events), 100):
            assert client.post("/v1/feedback", json={"events": events[i:i + 100]}).status_code == 200
    assert registry.version_of("challenger") == 2, "the live monitor was told not to apply"

    config = registry.state_dir.parent / "flywheel.yaml"
    nested: dict = {}
    for dotted, value in overrides.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    nested["gateway"]["monitor"]["apply"] = True
    config.write_text(yaml.safe_dump(nested))
    dry = CliRunner().invoke(app, ["canary", "--config", str(config)])
    assert dry.exit_code == 0 and dry.output.startswith("rollback (applied: no)"), dry.output
    assert registry.version_of("challenger") == 2
    result = CliRunner().invoke(app, ["canary", "--config", str(config), "--apply"])
    assert result.exit_code == 0 and result.output.startswith("rollback (applied: rolled_back)"), result.output
    assert "significantly worse" in result.output
    assert registry.version_of("challenger") is None and registry.version_of("champion") == 1
    assert registry.tags(2)["canary_decision"] == "rolled_back"


def send_until_decided(client, registry, rng, marked: str, *, resolved_if_marked: float, resolved_else: float,
                       timeout_s: float = 120) -> int:
    """Send chats from new users, 20 at a time, and post a ``resolved`` label for each (drawn with
    ``resolved_if_marked`` when the answer is ``marked``, else ``resolved_else``) until the registry has no
    challenger left (the monitor decided). Returns the number of chats sent."""
    user, deadline = 0, time.monotonic() + timeout_s
    while registry.version_of("challenger") is not None:
        assert time.monotonic() < deadline, "the monitor never decided"
        events = []
        for _ in range(20):
            user += 1
            r = client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT},
                            headers={"x-user-id": f"u{user}"})
            hit = r.json()["choices"][0]["message"]["content"] == marked
            events.append({"request_id": r.headers["x-request-id"],
                           "resolved": rng.random() < (resolved_if_marked if hit else resolved_else)})
        assert client.post("/v1/feedback", json={"events": events}).status_code == 200
    return user
