"""vLLM for real (from .venv-vllm): champion adapter served, new champion hot-loaded, failing smoke test rolled back,
a canary release loaded as 'challenger' beside the champion (and a failing one unloaded, its canary ended).

One server on 127.0.0.1 for the whole test, stopped by its PID at the end. Expected answers come from Hugging Face
greedy decoding of the same base + adapter (fp32 greedy: vLLM and HF agree).
"""
import json
import os
import socket
import time

import pytest
import yaml
from typer.testing import CliRunner

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register(cfg, adapter, passed, evaluated, base):
    from flywheel.records import Lineage
    from flywheel.registry import Registry

    return Registry.from_config(cfg).release(adapter, passed=passed, reason="test", evaluated_champion=evaluated,
                                             lineage=Lineage(base_model=str(base)))


def test_vllm_serves_the_champion_hot_swaps_and_rolls_back_a_failing_smoke_test(tiny, state_dir, tmp_path,
                                                                                  vllm_api_command):
    import flywheel.cli  # noqa: F401  (registers the commands)
    from demo.support_triage import reward_components
    from flywheel import serving
    from flywheel.cli.app import app
    from flywheel.config import load_config
    from flywheel.registry import registry_state, tracking_uri
    from models.decoding import AdapterPolicies
    from tasks.deploy import deploy_champion, rule_check

    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({"messages": p}) + "\n" for p in tiny["eval"][:6]))
    fmt = [c for c in reward_components() if c["name"] == "format"]  # JSON schema rule of the demo
    cfg_file = tmp_path / "flywheel.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "project": {"state_dir": str(state_dir)}, "evaluate": {"golden_set": str(golden)},
        "rewards": {"components": fmt},
        "serve": {"port": free_port(), "command": vllm_api_command,
                  "smoke_min_pass_rate": 0.8},
    }))
    cfg = load_config(cfg_file)
    prompts = tiny["eval"][:6]
    hf = AdapterPolicies(tiny["base"], {"weak": tiny["weak"], "strong": tiny["strong"], "noisy": tiny["noisy"]},
                         batch_size=8, max_new_tokens=cfg.serve.smoke_max_tokens)
    expected = {r: hf.generate(r, prompts) for r in ("weak", "strong", "noisy")}
    assert expected["weak"] != expected["strong"]  # the two adapters are distinguishable by their answers
    check = rule_check(cfg)
    assert sum(check(prompts, expected["strong"])) >= 0.8 * len(prompts)
    assert max(check(prompts, expected["noisy"])) == 0.0

    assert _register(cfg, tiny["weak"], True, None, tiny["base"]).champion_version == 1
    t0 = time.time()
    res = CliRunner().invoke(app, ["serve", "--config", str(cfg_file), "--detach"])
    assert res.exit_code == 0, res.output
    info = serving.read_server_info(cfg.state)
    try:
        startup_s = time.time() - t0
        # 1. the champion adapter answers (as HF decodes base + that adapter)
        latencies = []
        for p, want in zip(prompts, expected["weak"]):
            got, ms = serving.chat(info.url, "champion", p, cfg.serve.smoke_max_tokens)
            latencies.append(ms)
            assert got == want
        assert set(serving.served_models(info.url)) >= {"base", "champion", "support-bot-v1"}

        # 2. a better champion is promoted, hot-loaded, smoke-tested and answers under the stable name
        assert _register(cfg, tiny["strong"], True, 1, tiny["base"]).champion_version == 2
        result = deploy_champion.fn(cfg, None)
        assert result.status == "deployed", result.reason
        assert result.smoke.pass_rate >= 0.8
        assert [serving.chat(info.url, "champion", p)[0] for p in prompts] == expected["strong"]

        # 3. a broken champion fails the smoke test: unloaded, the previous keeps serving, registry rolled back
        assert _register(cfg, tiny["noisy"], True, 2, tiny["base"]).champion_version == 3
        result = deploy_champion.fn(cfg, None)
        assert result.status == "rolled_back" and result.rolled_back_registry, result.reason
        assert result.smoke.pass_rate == 0.0
        assert "support-bot-v3" not in serving.served_models(info.url)
        assert [serving.chat(info.url, "champion", p)[0] for p in prompts] == expected["strong"]
        aliases = registry_state(tracking_uri(cfg.state), cfg.project.name)["aliases"]
        assert aliases["champion"] == 2 and aliases["previous"] == 1 and aliases["challenger"] == 3

        # 4. canary release mode: a passing candidate is loaded as 'challenger' beside the champion (the weak
        # adapter, told apart by its answers; its smoke test only asks for answers, as its JSON key is wrong)
        cfg.registry.release_mode = "canary"
        canary = _register(cfg, tiny["weak"], True, 2, tiny["base"])
        assert (canary.decision, canary.version, canary.champion_version) == ("canary", 4, 2)
        result = deploy_champion.fn(cfg, canary, check=lambda _prompts, answers: [float(bool(a)) for a in answers])
        assert result.status == "deployed" and result.serving == "challenger", result.reason
        assert [serving.chat(info.url, "challenger", p)[0] for p in prompts] == expected["weak"]
        assert [serving.chat(info.url, "champion", p)[0] for p in prompts] == expected["strong"]
        assert serving.read_server_info(cfg.state).challenger_version == 4

        # 5. a broken canary fails its smoke test: unloaded, its canary ended in the registry, champion untouched
        broken = _register(cfg, tiny["noisy"], True, 2, tiny["base"])
        result = deploy_champion.fn(cfg, broken)
        assert result.status == "rolled_back" and result.rolled_back_registry, result.reason
        assert "support-bot-v5" not in serving.served_models(info.url)
        aliases = registry_state(tracking_uri(cfg.state), cfg.project.name)["aliases"]
        assert aliases == {"champion": 2, "challenger": None, "previous": 1}
        assert [serving.chat(info.url, "champion", p)[0] for p in prompts] == expected["strong"]
        print(f"\nvLLM startup {startup_s:.1f} s (healthy after {info.started_s:.1f} s); chat latency "
              f"median {sorted(latencies)[len(latencies) // 2]:.0f} ms over {len(latencies)} requests")
    finally:
        res = CliRunner().invoke(app, ["serve", "--config", str(cfg_file), "--stop"])
        assert res.exit_code == 0 and f"stopping PID {info.pid}: stopped" in res.output, res.output
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)
