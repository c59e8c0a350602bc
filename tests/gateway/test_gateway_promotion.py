"""A challenger the running gateway promotes by itself is then served under the champion's name: the gateway points
the upstream's ``champion`` adapter at the promoted version (vLLM's ``/v1/load_lora_adapter``, in place; here the
stub upstream records the call), and says so in the decision record. Real MLflow registry on SQLite."""
from __future__ import annotations

import json
import random
import time

import httpx
from gateway_upstream import ServerThread
from test_gateway_capture import CHAT
from test_gateway_routing import registry, send_until_decided  # noqa: F401  (registry: a fixture)

from flywheel.gateway.app import create_app


def test_a_promoted_challenger_is_loaded_as_the_champion(registry, stub):  # noqa: F811
    from flywheel.config import load_config

    registry.challenger()
    stub.answers["challenger"] = "better answer"
    cfg = load_config(None, {
        "project.state_dir": str(registry.state_dir), "source.uri": registry.cfg.source.uri,
        "gateway.upstream_url": stub.url, "gateway.routing.mode": "canary", "gateway.routing.challenger_share": 0.5,
        "gateway.routing.registry_refresh_s": 0.2, "gateway.monitor.check_every_s": 0.2,
        "gateway.monitor.min_samples": 40,
        # the stub answers in about a millisecond: on a busy machine its p95 ratio is noise, not the challenger
        "gateway.monitor.max_latency_p95_ratio": 1000})
    rng = random.Random(7)
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        send_until_decided(client, registry, rng, "better answer", resolved_if_marked=0.85, resolved_else=0.35)
        # the aliases moved first; the reload and then the record follow on the monitor's thread
        path, promoted = registry.state_dir / "gateway" / "decisions.jsonl", []
        deadline = time.monotonic() + 120  # a busy 2-core machine: the monitor thread may wait its turn
        while not promoted:
            lines = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
            promoted = [x for x in lines if x["applied"] == "promoted"]
            assert time.monotonic() < deadline, ("the promotion was never recorded", [
                (x["applied"], x["reason"]) for x in lines if x["applied"] != "recorded"])
            time.sleep(0.05)
    assert registry.version_of("champion") == 2 and registry.version_of("previous") == 1
    assert len(stub.loaded) == 1, stub.loaded
    load = stub.loaded[0]
    assert load["lora_name"] == "champion" and load["load_inplace"] is True  # the stub lists 'champion' as served
    assert "support-bot-v2" in load["lora_path"]
    assert len(promoted) == 1 and promoted[0]["serving"].startswith("'champion' reloaded with v2"), promoted


def test_an_upstream_that_cannot_load_adapters_is_said_so(registry):  # noqa: F811
    from flywheel.gateway.monitor import ArmStats, apply_decision, decide
    from flywheel.gateway.state import reload_champion

    registry.challenger()
    cfg = registry.cfg  # its upstream is http://127.0.0.1:9/v1: nothing listens there
    decision = apply_decision(registry, decide(ArmStats(labelled=400, successes=100),
                                               ArmStats(labelled=400, successes=300), cfg.gateway.monitor,
                                               {"champion": 1, "challenger": 2}))
    assert decision.applied == "promoted"
    said = reload_champion(cfg, registry)(decision)
    assert said.startswith("'champion' not reloaded with v2: ConnectError"), said


def test_a_challenger_that_is_the_champion_is_no_canary(registry):  # noqa: F811
    """The day-0 release is champion and challenger at once: nothing to compare, nothing recorded."""
    from test_gateway_routing import monitor_for

    from flywheel.gateway.offline import decide_from_logs

    assert registry.version_of("champion") == registry.version_of("challenger") == 1
    assert monitor_for(registry).check() is None
    assert decide_from_logs(registry.cfg) is None
    assert not (registry.state_dir / "gateway" / "decisions.jsonl").exists()


def test_the_next_deploy_catches_up_with_a_champion_the_canary_promoted(registry, stub):  # noqa: F811
    """The server still serves v1 as champion (an upstream that could not reload it): the night's deploy, with
    nothing new released, loads the registry's champion v2. The stub upstream stands in for vLLM's adapter API."""
    from flywheel.gateway.monitor import ArmStats, apply_decision, decide
    from flywheel.records import Release
    from flywheel.serving import ServerInfo, read_server_info, write_server_info
    from tasks.deploy import deploy_champion

    registry.challenger()
    cfg = registry.cfg
    base = stub.url.removesuffix("/v1")
    cfg.serve.url = base
    write_server_info(ServerInfo(pid=1, url=base, base_model="tiny", adapters={}, log="", started_s=0.0,
                                 champion_version=1, challenger_version=2), cfg.state)
    decision = apply_decision(registry, decide(ArmStats(labelled=400, successes=100),
                                               ArmStats(labelled=400, successes=300), cfg.gateway.monitor,
                                               {"champion": 1, "challenger": 2}))
    assert decision.applied == "promoted"
    rejected = Release(model_name="support-bot", version=3, decision="rejected", reason="gates failed",
                       champion_version=2, previous_version=1)
    result = deploy_champion.fn(cfg, rejected, check=lambda _p, answers: [1.0] * len(answers),
                                prompts_file=_golden(registry))
    assert result.status == "deployed" and result.version == 2, result.reason
    assert result.reason.startswith("the server served v1, the registry's champion is v2")
    assert [x["lora_name"] for x in stub.loaded] == ["support-bot-v2", "champion"]
    info = read_server_info(cfg.state)
    assert (info.champion_version, info.challenger_version) == (2, None)

    cfg.serve.url = None  # nothing behind any more: a rejected night deploys nothing
    assert deploy_champion.fn(cfg, rejected).status == "skipped"


def _golden(reg):
    path = reg.state_dir.parent / "golden.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    return path
