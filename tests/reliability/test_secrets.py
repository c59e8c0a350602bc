"""Secrets and PII never leak (issue #13, security): one real night with sentinel secrets and sentinel PII, then every
output is searched byte by byte.

The module runs day 0 (``flywheel bootstrap``) and one night (``flywheel run``) as a user would: the real commands in
subprocesses, a real ``prefect server`` with its own PREFECT_HOME (its SQLite database is searched too), the demo's fast
sizes, the logs in S3 (``moto_server``) read with sentinel AWS keys, an LLM-judge component whose endpoint (a replay
server over HTTP) receives the sentinel judge key from ``${ENV_VAR}`` in the YAML, and MLflow / Prefect / Hugging Face
tokens set where a user sets them. Then ``flywheel score`` runs once more against a judge that answers 401, so a stage
fails, and its message is searched as well.

Searched: every file under the module's folder (state dir, MLflow's SQLite DB and artifacts, Prefect's home and
database, the captured stdout/stderr of every command, the reports), each as its raw bytes plus its decoded content
(Parquet rows, gzip, zip members such as torch checkpoints). A sentinel secret found anywhere fails the test naming the
file. The PII (an email, a phone, a card number, an IP address, in messages, completion, feedback comment and
metadata) may stay only in the quarantine, which keeps rejected rows raw for forensics (owner-only files).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect_server import free_port as _free_port
from prefect_server import prefect_server

from flywheel.rewards.replay_server import ReplayServer

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "flywheel")
RUN_DEADLINE_S = 300.0
BUCKET, PREFIX = "flywheel-secrets", "prod/support"

# Where a user puts each secret: the environment (AWS, MLflow, Prefect, Hugging Face) or the YAML via ${VAR} (judge).
SENTINELS = {
    "AWS_ACCESS_KEY_ID": "AKIASNTL7Q4W2E9R5T3Y",
    "AWS_SECRET_ACCESS_KEY": "sntlAwsSecret0Q9w8E7r6T5y4U3i2O1pAaBbCcDd",
    "AWS_SESSION_TOKEN": "sntlAwsSessionToken5f3e1d9c7b5a",
    "FLYWHEEL_JUDGE_API_KEY": "sk-sntl-judge-4c1d2b9e8f7a6d5c",
    "MLFLOW_TRACKING_TOKEN": "sntl-mlflow-token-93b7e1c5",
    "MLFLOW_TRACKING_PASSWORD": "sntl-mlflow-password-2d8f4a6c",
    "PREFECT_API_KEY": "pnu_sntlPrefectKey7e5c3a1b9d",
    "HF_TOKEN": "hf_sntlHuggingFaceToken4b2d6f8a",
}
PII = {"email": "pii.sntl.7731@example.org", "phone": "+44 20 7946 0958", "card": "4111 1111 1111 1111",
       "ip": "203.0.113.77"}
# What is searched for each PII value (the value itself and the forms a partial scrub would leave).
PII_NEEDLES = {"email": [PII["email"], "pii.sntl.7731@"], "phone": [PII["phone"], "7946 0958"],
               "card": [PII["card"], "4111111111111111"], "ip": [PII["ip"]]}


# ---------------------------------------------------------------------------------------------------- search
def decoded_forms(path: Path) -> list[bytes]:
    """The file's raw bytes and what it decodes to: Parquet rows (as JSON), gzip content, zip members."""
    data = path.read_bytes()
    forms = [data]
    try:
        if data[:4] == b"PAR1":
            import pyarrow.parquet as pq

            forms.append(json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False).encode())
        elif data[:2] == b"\x1f\x8b":
            forms.append(gzip.decompress(data))
        elif data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                forms.extend(z.read(name) for name in z.namelist())
    except Exception as e:  # noqa: BLE001 - an undecodable file is searched as raw bytes (and said so)
        forms.append(f"<undecodable: {type(e).__name__}>".encode())
    return forms


def search(folders: list[Path], needles: dict[str, list[str]], skip=lambda p: False) -> tuple[dict[str, list], int]:
    """{file: [needle names found]} over every file under ``folders`` (but ``skip``), and the files searched."""
    found: dict[str, list[str]] = {}
    scanned = 0
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            if skip(path):
                continue
            scanned += 1
            forms = decoded_forms(path)
            hits = [name for name, values in needles.items()
                    if any(v.encode() in form for v in values for form in forms)]
            if hits:
                found[str(path)] = hits
    return found, scanned


# ---------------------------------------------------------------------------------------------------- servers
class UnauthorizedJudge(ReplayServer):
    """An endpoint that refuses every key with 401; ``echo=True`` quotes the key back, as some proxies do."""

    def __init__(self, echo: bool = False, **kw):
        super().__init__(**kw)
        self.echo = echo

    def answer(self, body: dict, action: str) -> tuple[int, str]:
        shown = self.auth[-1] if self.echo and self.auth else "(hidden)"
        return 401, f"Incorrect API key provided: {shown}. You can find your API key at the dashboard."


# ---------------------------------------------------------------------------------------------------- the night
def pii_rows(first_line: str, day: str) -> str:
    """Four valid rows carrying every PII kind in messages, completion, feedback comment and metadata, and one row
    that validate rejects (no completion) carrying them too (it belongs in the quarantine, raw)."""
    base = json.loads(first_line)
    said = f" Reach me at {PII['email']} or {PII['phone']}, card {PII['card']}, from {PII['ip']}."
    rows = []
    for k in range(5):
        row = json.loads(first_line)
        row["request_id"] = f"req-pii-{day}-{k}"
        row["messages"] = [dict(m) for m in base["messages"]]
        row["messages"][-1]["content"] += said
        row["feedback"] = {**(base.get("feedback") or {}), "comment": f"user left {PII['phone']} / {PII['email']}"}
        row["metadata"] = {**(base.get("metadata") or {}), "user_email": PII["email"], "client_ip": PII["ip"]}
        if k == 1:
            row["completion"] = base["completion"] + f" (copied to {PII['email']}, card {PII['card']})"
        if k == 4:  # rejected, a short chat (no system prompt): its PII is within any raw excerpt's first 300 chars
            row["completion"] = None
            row["messages"] = row["messages"][-1:]
        rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


def _is_plain_row(raw: bytes) -> bool:
    """A demo line that is a valid row (the demo logs carry defects; the PII rows copy a good one)."""
    try:
        row = json.loads(raw)
    except ValueError:
        return False
    return (isinstance(row, dict) and isinstance(row.get("completion"), str) and len(row["completion"]) < 200
            and isinstance(row.get("messages"), list) and len(row["messages"]) >= 2 and raw.isascii())


def upload_day(s3, generated: Path, day: str) -> None:
    """The day's demo objects plus one object of PII rows, into the S3 source."""
    folder = generated / f"dt={day}"
    for f in sorted(folder.iterdir()):
        s3.upload_file(str(f), BUCKET, f"{PREFIX}/dt={day}/{f.name}")
    line = next(raw.decode() for p in sorted(folder.glob("*.jsonl.gz"))
                for raw in gzip.decompress(p.read_bytes()).split(b"\n") if _is_plain_row(raw))
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/dt={day}/00-pii-sentinel.jsonl", Body=pii_rows(line, day).encode())


@dataclass
class Night:
    root: Path
    state: Path
    prefect_home: Path
    captured: Path
    config: Path
    day: str
    record: dict
    judge_auth: list
    failed: subprocess.CompletedProcess
    unauthorized_auth: list


def _run(cmd: list[str], env: dict, captured: Path, name: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=RUN_DEADLINE_S)
    (captured / f"{name}.out").write_text(proc.stdout)
    (captured / f"{name}.err").write_text(proc.stderr)
    if ok:
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def night(moto_endpoint, tmp_path_factory) -> Night:
    """Day 0 bootstrapped and day 1's night run with every sentinel set; then a score run against a 401 judge."""
    import boto3
    import yaml

    from demo import get_task
    from demo.logs import generate_logs
    from demo.run import FAST, demo_config

    root = tmp_path_factory.mktemp("secrets")
    captured = root / "captured"
    captured.mkdir()
    task = get_task("support_triage")
    days = generate_logs(task, root / "generated", days=2, rows_per_day=FAST["rows_per_day"], seed=0).days
    raw = demo_config(root, task, FAST, seed=0)
    raw["source"] = {"uri": f"s3://{BUCKET}/{PREFIX}", "s3": {"endpoint_url": moto_endpoint, "region": "us-east-1"}}
    raw["rewards"]["components"] = [*raw["rewards"]["components"],
                                    {"name": "helpfulness", "kind": "llm_judge", "weight": 0.25,
                                     "params": {"rubric": "helpfulness"}}]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_API"))}
    env |= SENTINELS | {"AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_USERNAME": "flywheel",
                        "PYTHONUNBUFFERED": "1"}
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id=SENTINELS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=SENTINELS["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=BUCKET)
    with ReplayServer(default="valid") as judge, UnauthorizedJudge() as refusing, \
            prefect_server(root / "prefect-home") as api:
        env["PREFECT_API_URL"], env["PREFECT_HOME"] = api, str(root / "prefect-home")
        raw["rewards"]["judge"] = {"base_url": judge.base_url, "model": "judge", "api_key": "${FLYWHEEL_JUDGE_API_KEY}",
                                   "concurrency": 4, "max_retries": 1, "backoff_s": 0.01}
        config = root / "flywheel.yaml"  # not write_config: it expands ${VAR} here, where the key is not set
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        upload_day(s3, root / "generated", days[0])
        _run([CLI, "bootstrap", "--config", str(config), "--day", days[0]], env, captured, "bootstrap")
        upload_day(s3, root / "generated", days[1])
        out = _run([CLI, "run", "--config", str(config), "--day", days[1]], env, captured, "night")
        record = json.loads(out.stdout)
        # a stage that fails: the same snapshot scored against a judge refusing the key
        raw["rewards"]["judge"] |= {"base_url": refusing.base_url, "model": "judge-refusing", "on_failure": "fail"}
        refused = root / "refusing.yaml"
        refused.write_text(yaml.safe_dump(raw, sort_keys=False))
        clean = next((root / "state" / "snapshots").glob(f"{record['snapshot_hash'][:16]}.clean.parquet"))
        failed = _run([CLI, "score", "--snapshot", str(clean), "--config", str(refused)], env, captured,
                      "score-401", ok=False)
        judge_auth, unauthorized_auth = list(judge.auth), list(refusing.auth)
    return Night(root=root, state=root / "state", prefect_home=root / "prefect-home", captured=captured,
                 config=config, day=days[1], record=record, judge_auth=judge_auth, failed=failed,
                 unauthorized_auth=unauthorized_auth)


# ---------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_the_night_really_used_the_secrets(night):
    """The sentinels were live: the logs came from S3 (with the sentinel keys), the judge got the sentinel key, the
    night completed, and the failing run failed at the judge with HTTP 401."""
    rec = night.record
    assert rec["status"] == "completed" and rec["rows_in"] == rec["rows_clean"] + rec["rows_quarantined"] > 0
    assert night.judge_auth and set(night.judge_auth) == {f"Bearer {SENTINELS['FLYWHEEL_JUDGE_API_KEY']}"}
    assert night.unauthorized_auth and set(night.unauthorized_auth) == set(night.judge_auth)
    assert night.failed.returncode == 1 and "HTTP 401" in night.failed.stderr, night.failed.stderr[-2000:]
    assert "helpfulness" in rec["components"]


@pytest.mark.slow
def test_no_sentinel_secret_in_any_output(night):
    """Every file of the module's folder: state, MLflow DB and artifacts, Prefect's home and DB, captured output."""
    needles = {name: [value] for name, value in SENTINELS.items()}
    found, scanned = search([night.root], needles)
    prefect_db = list(night.prefect_home.rglob("*.db"))
    assert prefect_db, "the Prefect database was searched"
    assert (night.state / "mlflow.db").is_file() and any((night.state / "mlartifacts").rglob("*"))
    assert scanned > 80, scanned
    assert not found, "sentinel secrets found in:\n" + "\n".join(f"  {f}: {', '.join(n)}" for f, n in found.items())


@pytest.mark.slow
def test_a_failing_stage_names_the_fault_not_the_secret(night):
    """The 401 run's message and output (stdout, stderr, the judge's error text) hold no sentinel."""
    text = night.failed.stdout + night.failed.stderr
    assert "401" in text
    for name, value in SENTINELS.items():
        assert value not in text, name


def _pii_skip(night: Night):
    """The inputs and the two private folders that keep raw rows on purpose (owner-only, checked below)."""
    inputs = (night.root / "generated", night.state / "quarantine", night.state / "raw")
    return lambda p: any(p.is_relative_to(folder) for folder in inputs)


@pytest.mark.slow
def test_no_pii_in_any_output_after_validate(night):
    """Clean and scored snapshots, the reward model's and the policy's data, evaluation reports and responses,
    MLflow params, tags and artifacts, Prefect's database (logs, artifacts), every command's output: no PII value
    (nor a half-scrubbed piece of one), validation reports included; only the quarantine and the raw snapshots keep
    them."""
    found, scanned = search([night.root], PII_NEEDLES, skip=_pii_skip(night))
    leaks = dict(found)
    assert scanned > 80
    clean = list(night.state.glob("snapshots/*.clean.parquet"))
    scored = list(night.state.glob("snapshots/*.scored-*.parquet"))
    assert len(clean) == 2 and scored, (clean, scored)
    assert not leaks, "PII found outside the quarantine in:\n" + "\n".join(f"  {f}: {', '.join(n)}"
                                                                         for f, n in leaks.items())


@pytest.mark.slow
def test_pii_was_scrubbed_not_dropped_and_the_quarantine_keeps_it_raw(night):
    """The PII rows reached the clean snapshot with every value replaced by its [NAME]; the rejected one is in the
    quarantine with its raw line, owner-only."""
    import pyarrow.parquet as pq

    rows = [r for p in night.state.glob("snapshots/*.clean.parquet") for r in pq.read_table(p).to_pylist()
            if r["request_id"].startswith("req-pii-")]
    assert len(rows) == 8, [r["request_id"] for r in rows]  # 4 valid PII rows per day
    text = json.dumps(rows, default=str)
    for token in ("[EMAIL]", "[PHONE]", "[CARD]", "[IP]"):
        assert token in text, token
    quarantined = [json.loads(line) for p in night.state.glob("quarantine/*.jsonl")
                   for line in p.read_text().splitlines() if "req-pii-" in line]
    assert len(quarantined) == 2 and all(PII["email"] in q["raw"] for q in quarantined)
    for p in night.state.glob("quarantine/*"):
        assert p.stat().st_mode & 0o077 == 0, p


@pytest.mark.slow
def test_raw_rows_live_in_owner_only_folders_only(night):
    """Raw rows (PII included) are in ``<state>/quarantine/`` and ``<state>/raw/`` only, both folders 0700 and every
    file 0600; elsewhere in the state folder no PII value is found."""
    found, _ = search([night.state], PII_NEEDLES, skip=_pii_skip(night))
    assert not found, sorted(found)
    raw = list((night.state / "raw").glob("*.raw.parquet"))
    assert len(raw) == 2, raw  # one per night
    assert search([night.state / "raw"], PII_NEEDLES)[0], "the raw snapshots keep the rows as read"
    for folder in ("quarantine", "raw"):
        assert (night.state / folder).stat().st_mode & 0o777 == 0o700, folder
        for p in (night.state / folder).iterdir():
            assert p.stat().st_mode & 0o077 == 0, p


# ---------------------------------------------------------------------------------------------------- fast
def test_the_search_finds_a_needle_in_every_kind_of_file(tmp_path):
    """Positive control of ``search``: a sentinel inside zstd Parquet, gzip, a zip member (torch checkpoints), SQLite
    and plain text is found; a file without it is not reported."""
    import sqlite3

    import pyarrow as pa
    import pyarrow.parquet as pq

    needle = "sntl-needle-6b1f"
    pq.write_table(pa.table({"t": [f"x {needle} y"] * 50}), tmp_path / "a.parquet", compression="zstd")
    (tmp_path / "b.gz").write_bytes(gzip.compress(needle.encode() * 20))
    with zipfile.ZipFile(tmp_path / "c.pt", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", needle * 20)
    with sqlite3.connect(tmp_path / "d.db") as db:
        db.execute("create table log (message text)")
        db.execute("insert into log values (?)", (f"token={needle}",))
    (tmp_path / "e.log").write_text(f"Authorization: Bearer {needle}\n")
    (tmp_path / "clean.txt").write_text("nothing here")
    found, scanned = search([tmp_path], {"needle": [needle]})
    assert scanned == 6
    assert sorted(Path(f).name for f in found) == ["a.parquet", "b.gz", "c.pt", "d.db", "e.log"]


def test_config_render_and_errors_hide_uri_passwords():
    from flywheel.config import ConfigError, config_from_dict, render_config

    secret = "sntl-uri-password-5e7a"
    cfg = config_from_dict({"registry": {"tracking_uri": f"https://flywheel:{secret}@mlflow.example.com"},
                            "rewards": {"judge": {"base_url": f"http://u:{secret}@judge.example/v1",
                                                  "api_key": secret}}})
    shown = render_config(cfg)
    assert secret not in shown and "flywheel:***@mlflow.example.com" in shown
    with pytest.raises(ConfigError) as err:
        config_from_dict({"gateway": {"upstream_url": f"ftp://u:{secret}@host/v1"}})
    assert "gateway.upstream_url" in str(err.value) and secret not in str(err.value)
    with pytest.raises(ConfigError) as err:
        config_from_dict({"rewards": {"judge": {"api_key": {"nested": secret}}}})
    assert "rewards.judge.api_key" in str(err.value) and secret not in str(err.value)


def test_a_judge_quoting_the_key_back_does_not_put_it_in_the_error(tmp_path):
    """A 401 whose body quotes the Authorization header (as some proxies do): the stage's error names HTTP 401."""
    import pandas as pd

    from flywheel.config import load_config
    from flywheel.rewards.judge import JudgeError
    from tasks.score import score

    key = SENTINELS["FLYWHEEL_JUDGE_API_KEY"]
    snap = tmp_path / "clean.parquet"
    pd.DataFrame([{"request_id": f"r{i}", "dt": "2026-11-20", "task": "t",
                   "messages": json.dumps([{"role": "user", "content": f"Where is order {300000 + i}?"}]),
                   "completion": f'{{"order_id": "{300000 + i}"}}'} for i in range(3)]).to_parquet(snap)
    with UnauthorizedJudge(echo=True) as server:
        cfg = load_config(None, overrides={
            "project.state_dir": str(tmp_path / "state"),
            "rewards.components": [{"name": "helpfulness", "kind": "llm_judge", "params": {"rubric": "helpfulness"}}],
            "rewards.judge": {"base_url": server.base_url, "api_key": key, "on_failure": "fail", "max_retries": 0}})
        with pytest.raises(JudgeError) as err:
            score(cfg, str(snap), snapshot_hash="h")
        assert server.auth and key in server.auth[0]
    assert "HTTP 401" in str(err.value)
    assert key not in str(err.value)


def test_an_unreachable_tracking_server_error_hides_the_uri_password(tmp_path, monkeypatch):
    from flywheel.registry import RegistryUnavailable, promote

    secret = "sntl-uri-password-5e7a"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(RegistryUnavailable) as err:
        promote(adapter, tracking_uri=f"http://flywheel:{secret}@127.0.0.1:{_free_port()}", model_name="m",
                experiment_id="0", state_dir=tmp_path / "state", passed=True, reason="r", evaluated_champion=None)
    assert secret not in str(err.value) and "flywheel:***@" in str(err.value)
    assert err.value.__cause__ is None  # MLflow's own error quotes the URI: not chained into the traceback


def test_evaluation_report_and_responses_scrub_golden_set_pii(tmp_path):
    """Golden-set prompts (``evaluate.golden_set``) never went through validate: the report, its HTML and
    ``responses.jsonl`` (all logged to MLflow) scrub them, and generated answers, before writing."""
    from flywheel.config import EvaluateConfig
    from flywheel.records import Decision
    from flywheel.report import write_report, write_responses
    from flywheel.stats import build_report

    said = f"I am {PII['email']}, {PII['phone']}, card {PII['card']}, ip {PII['ip']}"
    prompts = [[{"role": "user", "content": f"{said} #{i}"}] for i in range(6)]
    responses = {"candidate": [f"noted {PII['email']}"] * 6, "base": ["ok"] * 6}
    scores = {role: {"total": [float(i % 2) for i in range(6)]} for role in responses}
    measures = {role: {"length": [3.0] * 6} for role in responses}
    report = build_report(responses, scores, {"total": "total"}, measures, EvaluateConfig(bootstrap_samples=100),
                          prompts)
    json_path, html_path = write_report(report, Decision(passed=False, gates=[], reason="r"), scores, measures,
                                        tmp_path)
    lines = write_responses(tmp_path, prompts, ["golden"] * 6, responses)
    for path in (json_path, html_path, lines):
        text = path.read_text()
        assert "[EMAIL]" in text and "[PHONE]" in text, path
        for kind, needles in PII_NEEDLES.items():
            assert not any(n in text for n in needles), (path.name, kind)
    first = json.loads(lines.read_text().splitlines()[0])
    assert first["prompt"][0]["content"] == "I am [EMAIL], [PHONE], card [CARD], ip [IP] #0"
