"""observe from s3:// through boto3 against a real moto_server over HTTP (paginated listing, incremental, ETags)."""
import contextlib
import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from demo.support_triage import load_defects
from flywheel.config.data import S3Config, SourceConfig
from flywheel.sources import SourceError, with_backoff
from tasks.observe import commit_manifest, manifest_path, observe
from tasks.validate import validate


def upload(endpoint, folder, bucket, prefix):
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    with contextlib.suppress(ClientError):
        s3.create_bucket(Bucket=bucket)
    keys = []
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            key = f"{prefix}/{f.relative_to(folder).as_posix()}"
            s3.upload_file(str(f), bucket, key)
            keys.append(key)
    return s3, keys


def test_s3_source_end_to_end(moto_endpoint, aws_env, demo_logs, state_dir):
    logs, summary = demo_logs
    s3, _ = upload(moto_endpoint, logs, "flywheel-logs", "prod/support")
    source = SourceConfig(uri="s3://flywheel-logs/prod/support", s3=S3Config(endpoint_url=moto_endpoint),
                          list_page_size=2, max_workers=3)
    obs = observe(source, state_dir)
    # 4 log objects read over several list pages; _gold/ and _defects/ are not partitions
    assert obs.objects_read == 4 and obs.rows == summary.rows and obs.objects_ignored == 4
    val = validate(obs.snapshot_uri, state_dir, snapshot_hash=obs.snapshot_hash)
    commit_manifest(obs, state_dir)
    quarantined = map(json.loads, Path(val.quarantine_uri).read_text().splitlines())
    records = {(q["source_object"], q["source_line"]): q for q in quarantined}
    for x in load_defects(logs):
        if x["expect"] == "quarantine":
            assert x["reason"] in records[(x["object"], x["line"])]["reasons"]

    assert not observe(source, state_dir).new_data                       # nothing read twice
    s3.put_object(Bucket="flywheel-logs", Key="prod/support/dt=2026-11-01/part-late.jsonl",
                  Body=b'{"request_id": "late-1", "timestamp": "2026-11-01T10:00:00Z", "task": "t", '
                       b'"model_version": "m", "messages": [{"role": "user", "content": "hi"}], "completion": "ok"}\n')
    late = observe(source, state_dir)
    assert late.objects_read == 1 and late.rows == 1 and late.partitions == ["2026-11-01"]
    manifest = json.loads(manifest_path(state_dir, source.uri).read_text())
    assert all(len(entry["etag"]) >= 32 for entry in manifest["objects"].values())      # real S3 ETags


def test_missing_bucket_is_a_clear_error(moto_endpoint, aws_env, state_dir):
    source = SourceConfig(uri="s3://no-such-bucket/x", s3=S3Config(endpoint_url=moto_endpoint), retries=0)
    with pytest.raises(SourceError, match=r"s3://no-such-bucket/x/.*NoSuchBucket") as raised:
        observe(source, state_dir)
    assert raised.value.transient is False  # Prefect does not retry it


def test_backoff_retries_transient_errors_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
        return b"data"

    assert with_backoff(flaky, retries=3, base=0.01) == b"data" and len(calls) == 3

    def denied():
        calls.append(1)
        raise ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")

    calls.clear()
    with pytest.raises(ClientError):
        with_backoff(denied, retries=3, base=0.01)
    assert len(calls) == 1
