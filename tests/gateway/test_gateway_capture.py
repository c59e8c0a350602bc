"""Capture: one interaction-log row per call (streaming or not, tool calls too) that observe and validate read.

The gateway runs on a real uvicorn server (a thread of this process) in front of ``gateway_upstream.StubUpstream``
(a real uvicorn server too): the project's replay server answers no streaming requests.
"""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import httpx
import pytest
from gateway_upstream import ANSWER, ServerThread

from flywheel.gateway.app import create_app

SECRET = "sk-test-SECRET-123"
CHAT = [{"role": "system", "content": "Answer JSON."}, {"role": "user", "content": "Refund order 123456 please"}]
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}}}}]


def sink_rows(root: Path, feedback: bool = False) -> list[dict]:
    """Every row in the sink's ``dt=`` objects (the ``_feedback/`` ones when ``feedback``)."""
    base = root / "_feedback" if feedback else root
    rows = []
    for path in sorted(base.glob("dt=*/*.jsonl.gz")):
        rows += [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    return rows


def post_chat(client: httpx.Client, stream: bool = False, tools: bool = False, **headers) -> tuple[str, str]:
    body = {"model": "support-bot", "messages": CHAT, "temperature": 0.7, "stream": stream}
    if tools:
        body["tools"] = TOOLS
    if not stream:
        r = client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
        message = r.json()["choices"][0]["message"]
        return r.headers["x-request-id"], message.get("content") or json.dumps(message.get("tool_calls"))
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        text = r.read().decode()
        assert text.rstrip().endswith("data: [DONE]")
        return r.headers["x-request-id"], text


def test_rows_of_every_kind_pass_the_contract_and_are_read_by_observe(stub, make_cfg, tmp_path):
    from tasks.observe import observe
    from tasks.validate import validate

    cfg = make_cfg(stub.url)
    headers = {"x-user-id": "u-1", "x-session-id": "s-9", "authorization": f"Bearer {SECRET}",
               "cookie": f"session={SECRET}", "x-api-key": SECRET}
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        plain, text = post_chat(client, **headers)
        assert text == ANSWER
        streamed, sse = post_chat(client, stream=True, **headers)
        deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in sse.splitlines()
                  if line.startswith("data: {")]
        assert "".join(d.get("content") or "" for d in deltas) == ANSWER
        tool, _ = post_chat(client, tools=True, **headers)
        tool_streamed, _ = post_chat(client, stream=True, tools=True, **headers)
    # the Authorization header reached the upstream (forwarded), and nowhere else
    assert stub.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert [r["model"] for r in stub.requests] == ["champion"] * 4
    rows = {r["request_id"]: r for r in sink_rows(tmp_path / "logs")}
    assert set(rows) == {plain, streamed, tool, tool_streamed}
    for rid in (plain, streamed):
        row = rows[rid]
        assert row["completion"] == ANSWER and row["messages"] == CHAT
        assert row["model_version"] == "support-bot@champion" and row["task"] == "support-bot"
        assert row["metadata"]["user_id"] == "u-1" and row["metadata"]["session_id"] == "s-9"
        assert row["metadata"]["params"] == {"temperature": 0.7} and row["metadata"]["finish_reason"] == "stop"
        assert isinstance(row["latency_ms"], int) and row["latency_ms"] >= 0
    assert rows[streamed]["metadata"]["stream"] is True
    for rid in (tool, tool_streamed):
        row = rows[rid]
        assert row["completion"] == '<tool_call>\n{"name":"lookup_order","arguments":{"order_id":"123456"}}\n' \
                                    "</tool_call>"
        assert row["metadata"]["tool_calls"][0]["function"]["name"] == "lookup_order"
        assert row["metadata"]["tools"] == TOOLS
    everything = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "mlflow" not in p.name)
    everything += b"".join(gzip.decompress(p.read_bytes()) for p in (tmp_path / "logs").rglob("*.gz"))
    assert SECRET.encode() not in everything, "a credential was written to disk"

    observation = observe(cfg.source, cfg.state, commit=True)
    assert observation.rows == 4 and observation.objects_quarantined == 0
    validation = validate(observation.snapshot_uri, cfg.state, cfg.validation)
    assert (validation.rows_clean, validation.rows_quarantined) == (4, 0), validation.checks


def test_bad_requests_name_the_field_and_upstream_errors_are_not_captured(stub, make_cfg, tmp_path):
    stub.fail_models.add("champion")
    cfg = make_cfg(stub.url)
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        r = client.post("/v1/chat/completions", json={"model": "x", "messages": []})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400
        r = client.post("/v1/chat/completions", json={"model": "x", "messages": CHAT})
        assert r.status_code == 500 and "x-request-id" not in r.headers
        metrics = client.get("/metrics").text
    assert 'flywheel_gateway_upstream_errors_total{arm="champion",model_version="support-bot@champion"} 1' in metrics
    assert sink_rows(tmp_path / "logs") == []


def test_rows_rotate_by_count_and_a_replayed_segment_is_not_written_twice(tmp_path):
    from flywheel.gateway.capture import Capture, LocalSink

    sink = LocalSink(tmp_path / "logs")
    cap = Capture(tmp_path / "wal", sink, max_rows=3, max_seconds=3600)
    rows = [{"request_id": f"r{i}", "timestamp": f"2026-11-2{i % 2 + 4}T10:00:00Z"} for i in range(7)]
    for row in rows:
        cap.append(row)
    assert cap.flush() == 7
    keys = sorted(p.relative_to(tmp_path / "logs").as_posix() for p in (tmp_path / "logs").rglob("*.gz"))
    # 7 rows with max_rows 3 -> segments of 3, 3, 1 rows; each becomes one object per day it holds: 2 + 2 + 1
    assert len(keys) == 5 and {k.split("/")[0] for k in keys} == {"dt=2026-11-24", "dt=2026-11-25"}
    assert sorted(r["request_id"] for r in sink_rows(tmp_path / "logs")) == sorted(r["request_id"] for r in rows)
    cap.close()

    # a process killed after writing a segment's objects but before deleting it: the restart must not duplicate
    cap = Capture(tmp_path / "wal", sink, max_rows=100, max_seconds=3600)
    cap.append({"request_id": "again", "timestamp": "2026-11-24T11:00:00Z"})
    cap.rotate()
    segment = next(cap.dir.glob("*.ready"))
    kept = segment.read_bytes()
    cap.write_ready()
    cap.close()
    # + a corrupt line in the middle (kept aside) and a torn last line (never acknowledged)
    segment.write_bytes(b'{"request_id": "corr\x00upt"\n' + kept + b'{"request_id": "torn", "timesta')
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "logs").rglob("*.gz")}
    cap = Capture(tmp_path / "wal", sink)
    assert cap.flush() == 1 and cap.stats.objects_existing == 1 and cap.stats.torn_lines == 1
    assert cap.stats.corrupt_lines == 1 and b"corr" in next(cap.dir.glob("corrupt-*.jsonl")).read_bytes()
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "logs").rglob("*.gz")}
    ids = [r["request_id"] for r in sink_rows(tmp_path / "logs")]
    assert ids.count("again") == 1 and "torn" not in ids
    cap.close()


def test_a_second_process_cannot_take_a_wal_folder_in_use(tmp_path):
    from flywheel.gateway.capture import Capture, LocalSink, WalInUse

    first = Capture(tmp_path / "wal", LocalSink(tmp_path / "logs"))
    with pytest.raises(WalInUse, match="gateway.capture.wal_dir: .* in use by another gateway process"):
        Capture(tmp_path / "wal", LocalSink(tmp_path / "logs"))
    first.close()


def test_metrics_count_requests_latency_and_capture(stub, make_cfg):
    cfg = make_cfg(stub.url)
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        for _ in range(3):
            post_chat(client)
        client.post("/v1/feedback", json={"request_id": "gw-x", "thumbs": 1})
        text = client.get("/metrics").text
        assert client.get("/v1/models").json()["data"][0]["id"] == "champion"
    labels = 'arm="champion",model_version="support-bot@champion"'
    assert f'flywheel_gateway_requests_total{{{labels},status="200"}} 3' in text
    assert f'flywheel_gateway_latency_ms_bucket{{{labels},le="+Inf"}} 3' in text
    assert f"flywheel_gateway_latency_ms_count{{{labels}}} 3" in text
    assert 'flywheel_gateway_capture_rows_total{stream="interactions",state="accepted"} 3' in text
    assert "flywheel_gateway_feedback_events_total 1" in text
    assert 'flywheel_gateway_capture_lag_seconds{stream="interactions"}' in text


def test_capture_to_s3_is_read_by_observe_from_s3(stub, make_cfg, moto_endpoint, aws_env):
    import boto3

    from tasks.observe import observe
    from tasks.validate import validate

    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket="gw-logs")
    cfg = make_cfg(stub.url, **{"source.uri": "s3://gw-logs/support-bot", "source.s3.endpoint_url": moto_endpoint})
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        receipts = [post_chat(client, stream=i % 2 == 1)[0] for i in range(6)]
        assert client.post("/v1/feedback", json={"request_id": receipts[0], "resolved": True}).status_code == 200
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(
        Bucket="gw-logs")["Contents"]]
    assert any(k.startswith("support-bot/dt=") for k in keys)
    assert any(k.startswith("support-bot/_feedback/dt=") for k in keys)
    observation = observe(cfg.source, cfg.state, commit=True)
    assert observation.rows == 6 and observation.feedback_events == 1
    validation = validate(observation.snapshot_uri, cfg.state, cfg.validation)
    assert (validation.rows_clean, validation.rows_quarantined) == (6, 0)


def test_pii_is_scrubbed_at_capture_when_configured(stub, make_cfg, tmp_path):
    cfg = make_cfg(stub.url, **{"gateway.capture.scrub_pii": True})
    stub.answers["champion"] = "I will write to jane.doe@example.com"
    body = {"model": "m", "messages": [{"role": "user", "content": "I am jane.doe@example.com, call +44 20 7946 0958"}]}
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        r = client.post("/v1/chat/completions", json=body)
        assert "jane.doe@example.com" in r.text  # the user gets the real answer
    (row,) = sink_rows(tmp_path / "logs")
    assert row["completion"] == "I will write to [EMAIL]"
    assert row["messages"][0]["content"] == "I am [EMAIL], call [PHONE]"


def test_config_refuses_to_capture_credentials():
    from flywheel.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"gateway\.capture\.metadata_headers: .*credentials are never captured"):
        load_config(None, {"gateway.capture.metadata_headers": ["x-user-id", "Authorization"]})
    with pytest.raises(ConfigError, match=r"gateway\.upstream_url"):
        load_config(None, {"gateway.upstream_url": "localhost:8000"})


def test_sampled_token_ids_and_logprobs_are_captured_when_configured(stub, make_cfg, tmp_path):
    cfg = make_cfg(stub.url, **{"gateway.capture.logprobs": True})
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT})
        assert "logprobs" not in r.json()["choices"][0], "the client did not ask for them"
        plain = r.headers["x-request-id"]
        asked = client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT, "logprobs": True})
        assert asked.json()["choices"][0]["logprobs"]["content"]
        streamed, _ = post_chat(client, stream=True)
    assert all(req["logprobs"] and req["return_tokens_as_token_ids"] for req in stub.requests)
    rows = {r["request_id"]: r for r in sink_rows(tmp_path / "logs")}
    for rid in (plain, streamed):
        sampled = rows[rid]["metadata"]["logprobs"]
        assert sampled["token_ids"] == [ord(c) for c in ANSWER] and sampled["logprobs"] == [-0.25] * len(ANSWER)


def test_a_stream_the_client_drops_midway_is_still_captured_and_marked(stub, make_cfg, tmp_path):
    """The receipt went out with the first byte, so the row must exist: with what was sent, marked incomplete."""
    stub.chunk_delay_s = 0.2
    cfg = make_cfg(stub.url)
    body = {"model": "m", "messages": CHAT, "stream": True}
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            receipt = r.headers["x-request-id"]
            next(r.iter_raw())  # the first chunk, then hang up
        deadline = time.monotonic() + 10
        while gw.server.server_state.connections:
            assert time.monotonic() < deadline, "the gateway kept the dropped stream open"
            time.sleep(0.02)
    (row,) = sink_rows(tmp_path / "logs")
    assert row["request_id"] == receipt and row["metadata"]["stream_incomplete"] is True
    assert ANSWER.startswith(row["completion"]) and row["completion"] != ANSWER
