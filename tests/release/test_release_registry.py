"""Promotion, aliases, lineage, rollback and the cross-process lock: MLflow on SQLite and `mlflow server` (REST)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flywheel.records import Lineage
from flywheel.registry import (
    PromotionError,
    client_for,
    ensure_experiment,
    fetch_adapter,
    promote,
    registry_state,
    rollback,
    tracking_uri,
)

NAME = "support-bot"


def _promote(uri, state, adapter, passed, evaluated, **kw):
    exp = ensure_experiment(NAME, state, None if uri.startswith("sqlite") else uri)
    return promote(adapter, tracking_uri=uri, model_name=NAME, experiment_id=exp, state_dir=state, passed=passed,
                   reason="gates passed" if passed else "total_gain failed", evaluated_champion=evaluated,
                   summary={"gain": 0.1}, lineage=Lineage(snapshot_hash="sha-1", reward_spec_hash="spec-1",
                                                          base_model="tiny-base", validation_report="r.json"), **kw)


def _registry_lifecycle(uri: str, state: Path, adapters: list[Path], tmp: Path) -> None:
    v1 = _promote(uri, state, adapters[0], True, None)
    assert (v1.decision, v1.version, v1.champion_version, v1.previous_version) == ("promoted", 1, 1, None)

    bad = _promote(uri, state, adapters[1], False, 1)  # failed gates: registered, challenger, never champion
    assert bad.decision == "rejected" and bad.champion_version == 1
    st = registry_state(uri, NAME)
    assert st["aliases"] == {"champion": 1, "challenger": 2, "previous": None}

    v3 = _promote(uri, state, adapters[2], True, 1)
    assert (v3.decision, v3.champion_version, v3.previous_version) == ("promoted", 3, 1)

    stale = _promote(uri, state, adapters[3], True, 1)  # evaluated against v1, but v3 is champion now
    assert stale.decision == "stale" and stale.champion_version == 3 and "re-evaluate" in stale.reason

    tags = client_for(uri).get_model_version(NAME, "3").tags
    assert tags["parent_champion_version"] == "1" and tags["snapshot_hash"] == "sha-1"
    assert tags["validation_report"] == "r.json"
    assert tags["reward_spec_hash"] == "spec-1" and tags["base_model"] == "tiny-base" and tags["decision"] == "promoted"
    assert tags["code_revision"] and json.loads(tags["eval_summary"]) == {"gain": 0.1}

    version, local = fetch_adapter(uri, NAME, "champion", tmp / "champ")
    assert version == 3 and (local / "adapter_config.json").is_file()
    weights = "adapter_model.safetensors"
    assert (local / weights).read_bytes() == (adapters[2] / weights).read_bytes()

    back = rollback(tracking_uri=uri, model_name=NAME, state_dir=state, reason="test")
    assert (back.champion_version, back.previous_version) == (1, None)
    assert registry_state(uri, NAME)["versions"][3]["rolled_back"].endswith("test")
    with pytest.raises(PromotionError, match="no 'previous'"):
        rollback(tracking_uri=uri, model_name=NAME, state_dir=state)


def test_promotion_lifecycle_on_sqlite(state_dir, adapters, tmp_path):
    _registry_lifecycle(tracking_uri(state_dir), state_dir, adapters, tmp_path)


@pytest.mark.slow
def test_promotion_lifecycle_on_mlflow_server(mlflow_server, state_dir, adapters, tmp_path):
    _registry_lifecycle(mlflow_server, state_dir, adapters, tmp_path)


def test_promotion_refuses_a_folder_that_is_not_an_adapter(state_dir, tmp_path):
    with pytest.raises(PromotionError, match="adapter_config.json"):
        _promote(tracking_uri(state_dir), state_dir, tmp_path, True, None)


def test_champion_does_not_move_when_an_expected_artifact_is_missing(state_dir, adapters):
    uri = tracking_uri(state_dir)
    rel = _promote(uri, state_dir, adapters[0], True, None, expect_logged=["evaluation/report.json"])
    assert rel.decision == "rejected" and "evaluation/report.json" in rel.reason and rel.champion_version is None


RACER = """
import sys, time
from pathlib import Path
from flywheel.records import Lineage
from flywheel.registry import ensure_experiment, promote
uri, state, adapter, go, fresh = sys.argv[1:6]
exp = ensure_experiment("support-bot", state, None if uri.startswith("sqlite") else uri)
while not Path(go).exists():
    time.sleep(0.01)
rel = promote(adapter, tracking_uri=uri, model_name="support-bot", experiment_id=exp, state_dir=state, passed=True,
              reason="race", evaluated_champion=1, lineage=Lineage(code_revision="test"),
              require_fresh_evaluation=fresh == "1")
print(rel.model_dump_json())
"""


def _race(uri: str, state: Path, adapters: list[Path], tmp: Path, fresh: bool) -> list[dict]:
    go = tmp / f"go-{fresh}"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, uri, str(state), str(a), str(go), "1" if fresh else "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in adapters]
    time.sleep(8)  # both processes imported mlflow and wait at the barrier
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


@pytest.mark.slow
def test_two_racing_promotions_leave_one_champion_and_a_consistent_previous(state_dir, adapters, tmp_path):
    uri = tracking_uri(state_dir)
    assert _promote(uri, state_dir, adapters[0], True, None).champion_version == 1

    outs = _race(uri, state_dir, adapters[1:3], tmp_path, fresh=True)
    assert sorted(o["decision"] for o in outs) == ["promoted", "stale"]
    winner = next(o for o in outs if o["decision"] == "promoted")
    st = registry_state(uri, NAME)
    assert st["aliases"]["champion"] == winner["version"] and st["aliases"]["previous"] == 1

    # without the freshness rule both promote, one after the other: the second's previous is the first
    outs = _race(uri, state_dir, [adapters[3], adapters[0]], tmp_path, fresh=False)
    assert [o["decision"] for o in outs] == ["promoted", "promoted"]
    st = registry_state(uri, NAME)
    first, second = sorted(outs, key=lambda o: o["champion_version"] == st["aliases"]["champion"])
    assert st["aliases"]["champion"] == second["version"] and st["aliases"]["previous"] == first["version"]
    # invariant: previous is the champion's recorded parent, so rollback walks history without gaps
    client = client_for(uri)
    champ_tags = client.get_model_version(NAME, str(st["aliases"]["champion"])).tags
    assert champ_tags["parent_champion_version"] == str(st["aliases"]["previous"])
    assert rollback(tracking_uri=uri, model_name=NAME, state_dir=state_dir).champion_version == first["version"]


def test_manifests_are_rendered_with_the_champion_uri_and_base_model(state_dir, adapters, tmp_path):
    import yaml

    from flywheel.config import load_config
    from flywheel.serving import render_champion_manifests

    uri = tracking_uri(state_dir)
    _promote(uri, state_dir, adapters[0], True, None)
    cfg = load_config(None, overrides={"project.state_dir": str(state_dir), "serve.gpus": 2})
    files = {p.name: p for p in render_champion_manifests(cfg, tmp_path / "out")}
    assert set(files) == {"k8s.yaml", "docker-compose.yaml"}
    source = client_for(uri).get_model_version(NAME, "1").source
    deployment, service = yaml.safe_load_all(files["k8s.yaml"].read_text())
    spec = deployment["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert "--model=tiny-base" in args and "champion=/adapters/champion/adapter" in args
    assert source in spec["initContainers"][0]["args"][0]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert service["kind"] == "Service" and service["spec"]["selector"] == {"app": "support-bot-vllm"}
    compose = yaml.safe_load(files["docker-compose.yaml"].read_text())
    assert "--model=tiny-base" in compose["services"]["vllm"]["command"]
    assert all("${" not in p.read_text() for p in files.values())  # every placeholder filled


def test_deploy_is_skipped_and_says_why_without_a_server_or_a_new_champion(state_dir, adapters):
    import socket

    from flywheel.config import load_config
    from tasks.deploy import deploy_champion

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    cfg = load_config(None, overrides={"project.state_dir": str(state_dir), "serve.port": port})
    with pytest.raises(ValueError, match="no champion yet"):
        deploy_champion.fn(cfg, None)
    rel = _promote(tracking_uri(state_dir), state_dir, adapters[0], True, None)
    result = deploy_champion.fn(cfg, rel)
    assert result.status == "skipped" and "no vLLM server" in result.reason and result.version == 1
    assert deploy_champion.fn(cfg, None).status == "skipped"  # `flywheel deploy`: whatever the champion is
    rejected = rel.model_copy(update={"decision": "rejected", "version": 2})
    assert deploy_champion.fn(cfg, rejected).status == "skipped"
