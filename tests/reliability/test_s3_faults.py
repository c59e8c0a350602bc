"""S3 faults through a fault-injecting proxy in front of a real moto_server: observe survives transient faults with
retries and reads every object exactly once; a changed ETag between list and get is read as the new version, under
its own ETag; a permanent fault fails the stage naming the object and the error, and leaves the manifest untouched.

Each test has its own bucket; the stage runs as the nightly flow runs it, without Prefect (observe -> validate ->
commit_manifest), through ``s3_proxy.S3FaultProxy``. Its counts say how many requests of each key were served whole:
"read exactly once" is one successful GET per object. Rows are compared with a fault-free run straight to moto.
"""
from __future__ import annotations

import gzip
import hashlib
import uuid
from pathlib import Path

import boto3
import corpus  # tests/reliability/corpus.py (pytest puts this folder on sys.path)
import pyarrow.parquet as pq
import pytest
from s3_proxy import Fault, S3FaultProxy

from flywheel.config.data import S3Config, SourceConfig
from flywheel.sources import SourceError
from tasks.observe import commit_manifest, load_manifest, manifest_path, observe
from tasks.validate import validate

PREFIX = "prod/support"
RETRIES = 4
NOW = corpus.NOW[2]  # validate's "now": after both days' rows


def night_objects(day: str, first: int) -> dict[str, bytes]:
    """Two log objects of ``day`` (one gzip), 3 rows each, ids from ``first``; plus a key that is not a log."""
    rows = [corpus.row("s3", first + i, day=day) for i in range(6)]
    return {f"dt={day}/part-0.jsonl": corpus.jsonl(rows[:3]),
            f"dt={day}/part-1.jsonl.gz": gzip.compress(corpus.jsonl(rows[3:]), mtime=0),
            f"dt={day}/_SUCCESS": b""}


OBJECTS = {**night_objects(corpus.DAY1, 0), **night_objects(corpus.DAY2, 100)}
LOG_KEYS = sorted(k for k in OBJECTS if not k.endswith("_SUCCESS"))
ROWS = 12


@pytest.fixture
def moto(moto_endpoint, aws_env):
    """A boto3 client straight to moto (no proxy) and a new bucket holding OBJECTS under PREFIX."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    for key, data in OBJECTS.items():
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=data)
    return s3, bucket


@pytest.fixture
def proxy(moto_endpoint):
    with S3FaultProxy(moto_endpoint) as p:
        yield p


def source_of(bucket: str, endpoint: str) -> SourceConfig:
    return SourceConfig(uri=f"s3://{bucket}/{PREFIX}", s3=S3Config(endpoint_url=endpoint), list_page_size=2,
                        max_workers=2, retries=RETRIES, retry_base_seconds=0.01)


def run_night(source: SourceConfig, state: Path) -> tuple[object, list[dict]]:
    """observe -> validate -> commit, as the nightly flow runs them; the observation and the clean rows."""
    obs = observe(source, state)
    val = validate(obs.snapshot_uri, state, snapshot_hash=obs.snapshot_hash, now=NOW)
    commit_manifest(obs, state)
    assert obs.rows == val.rows_in == val.rows_clean and val.rows_quarantined == 0
    return obs, sorted(pq.read_table(val.clean_uri).to_pylist(), key=lambda r: r["request_id"])


def etags(s3, bucket: str) -> dict[str, str]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/")["Contents"]
    return {o["Key"][len(PREFIX) + 1:]: o["ETag"].strip('"') for o in listing}


@pytest.fixture(scope="module")
def fault_free(moto_endpoint, tmp_path_factory) -> list[dict]:
    """The clean rows of a fault-free night, read straight from moto."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            patch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=moto_endpoint)
        bucket = f"faults-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        for key, data in OBJECTS.items():
            s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=data)
        state = tmp_path_factory.mktemp("fault-free")
        obs, rows = run_night(source_of(bucket, moto_endpoint), state)
    assert obs.objects_read == len(LOG_KEYS) and len(rows) == ROWS == len({r["request_id"] for r in rows})
    return rows


# ---------------------------------------------------------------- transient faults

LISTING = PREFIX + "/"  # the log listing's prefix (observe lists _feedback/ first)
TRANSIENT = {  # name -> fault fields; each hits listing page 1, listing page 2 and every log object's get
    "503": dict(kind="status", status=503, code="ServiceUnavailable", times=2),
    "500": dict(kind="status", status=500, code="InternalError", times=2),
    "slowdown": dict(kind="status", status=503, code="SlowDown", times=3),
    "reset_mid_body": dict(kind="reset", times=2),
    "reset_before_response": dict(kind="refuse", times=2),
    "slow": dict(kind="slow", delay=0.3, times=1),
    "truncated_body": dict(kind="truncate", times=2),
}


@pytest.mark.parametrize("name", TRANSIENT)
def test_transient_fault_is_retried_and_every_object_read_once(name, moto, proxy, state_dir, fault_free):
    s3, bucket = moto
    fields = TRANSIENT[name]
    times = fields["times"]
    faults = [Fault("list", key=LISTING, **fields),                       # page 1: its first `times` attempts
              Fault("list", key=LISTING, skip=times + 1, **fields),       # page 2 (after page 1 succeeded)
              *[Fault("get", key=f"{PREFIX}/{key}", **fields) for key in LOG_KEYS]]
    proxy.plan(*faults)
    obs, rows = run_night(source_of(bucket, proxy.url), state_dir)

    assert [f.matched > f.skip for f in faults] == [True] * len(faults)  # every planned fault was hit
    assert sum(proxy.counts["faulted"].values()) == len(faults) * times
    assert proxy.ok("get") == {f"{PREFIX}/{key}": 1 for key in LOG_KEYS}  # each object read whole exactly once
    assert obs.objects_read == len(LOG_KEYS) and obs.objects_quarantined == 0
    assert rows == fault_free                                          # every row once, as without faults
    manifest = load_manifest(manifest_path(state_dir, obs.source_uri))["objects"]
    listed = etags(s3, bucket)
    assert {k: m["etag"] for k, m in manifest.items()} == {k: listed[k] for k in LOG_KEYS}
    assert not observe(source_of(bucket, proxy.url), state_dir).new_data  # nothing read twice


@pytest.fixture
def stop_forkserver():
    """Parse workers come from multiprocessing's forkserver, which outlives the pool and keeps the environment it
    started with (an earlier test's, without this test's AWS credentials): stop it (and its resource tracker) before
    and after the test, as the standard library's own tests do."""
    from multiprocessing import forkserver, resource_tracker

    def stop():
        forkserver._forkserver._stop()
        resource_tracker._resource_tracker._stop()

    stop()
    yield
    stop()


def test_faults_on_list_and_get_at_once_with_parse_workers(moto, proxy, state_dir, fault_free, stop_forkserver):
    """Worker processes download and parse (a big batch): their retries and their ETags are the same."""
    s3, bucket = moto
    proxy.plan(Fault("list", key=LISTING, kind="status", code="SlowDown", times=2),
               *[Fault("get", key=f"{PREFIX}/{key}", kind=kind, times=1)
                 for key, kind in zip(LOG_KEYS, ("reset", "truncate", "refuse", "slow"), strict=True)])
    source = source_of(bucket, proxy.url).model_copy(update={"parse_workers": 2, "parallel_min_bytes": 0})
    obs, rows = run_night(source, state_dir)
    assert proxy.ok("get") == {f"{PREFIX}/{key}": 1 for key in LOG_KEYS}
    assert rows == fault_free
    assert not observe(source, state_dir).new_data


# ---------------------------------------------------------------- an object rewritten between list and get


@pytest.mark.parametrize("rewrites", [1, 2])
def test_object_rewritten_after_listing_is_read_as_the_new_version(rewrites, moto, proxy, state_dir):
    s3, bucket = moto
    key = LOG_KEYS[0]
    versions = []

    def rewrite():  # a writer replaces the object after observe listed it (and again after it was headed)
        data = corpus.jsonl([corpus.row("rewritten", 10 * len(versions) + i) for i in range(2)])
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=data)
        versions.append(data)

    proxy.plan(Fault("get", key=f"{PREFIX}/{key}", kind="before", action=rewrite, times=rewrites))
    obs, rows = run_night(source_of(bucket, proxy.url), state_dir)

    final = versions[-1]
    ids = [r["request_id"] for r in rows if r["source_object"] == key]
    assert ids == [f"rewritten-{10 * (rewrites - 1) + i}" for i in range(2)]   # the newest bytes, nothing older
    assert obs.rows == ROWS - 3 + 2
    assert proxy.counts["seen"]["get", f"{PREFIX}/{key}"] == rewrites + 1       # conditional gets, 412 each time
    assert proxy.counts["seen"]["head", f"{PREFIX}/{key}"] == rewrites          # the key looked up again
    assert proxy.ok("get") == {f"{PREFIX}/{k}": 1 for k in LOG_KEYS}
    entry = load_manifest(manifest_path(state_dir, obs.source_uri))["objects"][key]
    assert entry["etag"] == hashlib.md5(final).hexdigest() == etags(s3, bucket)[key]  # the ETag of the bytes read
    assert entry["size"] == len(final)
    assert not observe(source_of(bucket, proxy.url), state_dir).new_data            # not read again next night


# ---------------------------------------------------------------- permanent faults

PERMANENT = {  # name -> (fault, the words the error must hold, GET/list attempts expected)
    "get_access_denied": (dict(op="get", kind="status", status=403, code="AccessDenied"), "AccessDenied", 1),
    "get_503_every_attempt": (dict(op="get", kind="status", status=503, code="ServiceUnavailable"),
                              "ServiceUnavailable", RETRIES + 1),
    "get_reset_every_attempt": (dict(op="get", kind="reset"), "after 5 attempts", RETRIES + 1),
    "list_access_denied": (dict(op="list", kind="status", status=403, code="AccessDenied"), "AccessDenied", 1),
    "list_slowdown_every_attempt": (dict(op="list", kind="status", status=503, code="SlowDown"), "SlowDown",
                                    RETRIES + 1),
}


@pytest.mark.parametrize("name", sorted(PERMANENT))
def test_permanent_fault_fails_the_stage_and_leaves_the_manifest(name, moto, proxy, state_dir, fault_free):
    s3, bucket = moto
    fields, words, attempts = PERMANENT[name]
    day2 = sorted(k for k in LOG_KEYS if corpus.DAY2 in k)
    for key in day2:  # night 1 sees only day 1
        s3.delete_object(Bucket=bucket, Key=f"{PREFIX}/{key}")
    source = source_of(bucket, proxy.url)
    assert observe(source, state_dir, commit=True).objects_read == len(LOG_KEYS) - len(day2)
    for key in day2:
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=OBJECTS[key])
    manifest = manifest_path(state_dir, source.uri)
    before = manifest.read_bytes()
    snapshots = sorted((state_dir / "raw").iterdir())

    target = f"{PREFIX}/{day2[-1]}" if fields["op"] == "get" else LISTING
    proxy.reset()
    proxy.plan(Fault(key=target, times=None, **fields))
    with pytest.raises(SourceError) as failure:
        observe(source, state_dir)
    message = str(failure.value)
    assert f"s3://{bucket}/{target}" in message and words in message, message
    assert proxy.counts["seen"][fields["op"], target] == attempts      # permanent errors are not retried
    assert manifest.read_bytes() == before                             # the manifest untouched
    assert sorted((state_dir / "raw").iterdir()) == snapshots    # no raw snapshot, no partial file
    assert sorted(p.name for p in manifest.parent.iterdir() if p.name.startswith("pending")) == []

    proxy.reset()                                                      # the next night, fault-free
    second, rows = run_night(source, state_dir)
    assert second.objects_read == len(day2) and proxy.ok("get") == {f"{PREFIX}/{k}": 1 for k in day2}
    assert rows == [r for r in fault_free if r["dt"] == corpus.DAY2]
