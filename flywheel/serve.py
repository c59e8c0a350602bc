"""Serve and deploy: vLLM's OpenAI-compatible server with the base model + the champion LoRA, hot-swapped on deploy.

The server runs from its own environment (``make vllm-env`` builds ``.venv-vllm``; the command is configurable,
``serve.command``). Adapters are served under two names:
- ``<model>-v<N>``: one per registry version, loaded when the version is deployed;
- ``serve.adapter_name`` (default ``champion``): the stable name clients request, reloaded in place once the new
  version passed its smoke test.

``deploy``: load ``<model>-v<N>`` (``/v1/load_lora_adapter``), smoke-test it (golden prompts, answers graded by the
rule graders), then point ``champion`` at it. On failure the new adapter is unloaded, ``champion`` keeps serving the
previous weights, and (configurable) the registry's champion alias is rolled back too.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import BaseModel

from flywheel.config.release import ServeConfig

CheckFn = Callable[[list[list[dict]], list[str]], list[float]]  # rule graders: 1.0 = pass


class ServerInfo(BaseModel):
    pid: int
    url: str  # http://host:port (no /v1)
    base_model: str
    adapters: dict[str, str]
    log: str
    started_s: float  # seconds from launch to healthy
    champion_version: int | None = None


class SmokeResult(BaseModel):
    passed: bool
    pass_rate: float
    n: int
    answers: list[str]
    latency_ms: list[float]
    error: str | None = None


class DeployResult(BaseModel):
    """Outcome of the deploy stage: deployed | rolled_back | skipped (no server running)."""

    status: str
    endpoint: str
    adapter: str  # versioned adapter name that was tested
    serving: str  # stable name clients use
    version: int | None
    smoke: SmokeResult | None = None
    rolled_back_registry: bool = False
    reason: str

    @property
    def deployed(self) -> bool:
        return self.status == "deployed"


def adapter_name(model_name: str, version: int) -> str:
    return f"{model_name}-v{version}"


# ---------------------------------------------------------------------------------------------------- process
def server_command(cfg: ServeConfig, base_model: str | Path, adapters: dict[str, str | Path], port: int | None = None) -> list[str]:
    """The full command line: ``serve.command`` + model, LoRA and network flags."""
    cmd = list(cfg.command) + [
        "--model", str(base_model), "--served-model-name", cfg.served_model_name,
        "--host", cfg.host, "--port", str(port or cfg.port), "--max-model-len", str(cfg.max_model_len),
        "--dtype", cfg.dtype, "--enable-lora", "--max-lora-rank", str(cfg.max_lora_rank), "--max-loras", str(cfg.max_loras),
    ]
    if adapters:
        cmd += ["--lora-modules", *[f"{n}={Path(p).resolve()}" for n, p in adapters.items()]]
    return cmd + list(cfg.extra_args)


def server_env(cfg: ServeConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # needed by /v1/load_lora_adapter
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> float:
    """Poll ``/health``; returns the seconds waited. Raises with the log tail if the process dies or times out."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"vLLM server exited with code {proc.returncode} during startup:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.time() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"vLLM server at {url} not healthy after {timeout_s:.0f} s (see {log})")


def start_server(cfg: ServeConfig, base_model: str | Path, adapters: dict[str, str | Path], log_path: str | Path,
                 port: int | None = None) -> ServerInfo:
    """Launch the server in its own session, wait until healthy, return its PID and URL."""
    cmd = server_command(cfg, base_model, adapters, port)
    exe = Path(cmd[0])
    if exe.parts and not exe.is_absolute() and len(exe.parts) > 1 and not exe.exists():
        raise FileNotFoundError(f"serve.command: {exe} not found; build the vLLM environment with `make vllm-env`")
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=server_env(cfg), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{cfg.host}:{port or cfg.port}"
    try:
        took = wait_healthy(url, cfg.startup_timeout_s, proc, log)
    except BaseException:
        stop_server(proc.pid)
        raise
    return ServerInfo(pid=proc.pid, url=url, base_model=str(base_model),
                      adapters={n: str(Path(p).resolve()) for n, p in adapters.items()}, log=str(log), started_s=took)


def stop_server(pid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM the server's process group (it was started in its own session), SIGKILL after ``timeout_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def write_server_info(info: ServerInfo, state_dir: str | Path) -> Path:
    path = Path(state_dir) / "serve" / "server.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(info.model_dump_json(indent=2))
    return path


def read_server_info(state_dir: str | Path) -> ServerInfo | None:
    path = Path(state_dir) / "serve" / "server.json"
    return ServerInfo.model_validate_json(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------------- adapters
def load_adapter(url: str, name: str, path: str | Path, inplace: bool = False) -> None:
    body = {"lora_name": name, "lora_path": str(Path(path).resolve())}
    if inplace:
        body["load_inplace"] = True
    r = httpx.post(f"{url}/v1/load_lora_adapter", json=body, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"load_lora_adapter {name} from {path}: HTTP {r.status_code}: {r.text[:500]}")


def unload_adapter(url: str, name: str) -> None:
    r = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"unload_lora_adapter {name}: HTTP {r.status_code}: {r.text[:500]}")


def served_models(url: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]


def chat(url: str, model: str, messages: list[dict], max_tokens: int = 48) -> tuple[str, float]:
    """One greedy chat completion through the ``openai`` client; returns (answer, latency in ms)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("VLLM_API_KEY", "EMPTY"), max_retries=0, timeout=120)
    t0 = time.perf_counter()
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0.0)
    return (r.choices[0].message.content or "").strip(), (time.perf_counter() - t0) * 1000


def smoke_test(url: str, model: str, prompts: list[list[dict]], check: CheckFn | None, max_tokens: int = 48,
               min_pass_rate: float = 1.0) -> SmokeResult:
    """Golden prompts through the served adapter; pass when the share of answers passing ``check`` >= min_pass_rate."""
    answers, lat = [], []
    try:
        for p in prompts:
            a, ms = chat(url, model, p, max_tokens)
            answers.append(a)
            lat.append(ms)
    except Exception as e:  # noqa: BLE001  (an adapter that cannot answer fails the smoke test)
        return SmokeResult(passed=False, pass_rate=0.0, n=len(prompts), answers=answers, latency_ms=lat,
                           error=f"{type(e).__name__}: {e}"[:500])
    scores = check(prompts, answers) if check else [float(bool(a)) for a in answers]
    rate = sum(1.0 for s in scores if not math.isnan(s) and s >= 0.5) / max(1, len(scores))
    return SmokeResult(passed=rate >= min_pass_rate, pass_rate=rate, n=len(prompts), answers=answers, latency_ms=lat)


def deploy(url: str, model_name: str, version: int, adapter_dir: str | Path, prompts: list[list[dict]],
           check: CheckFn | None, cfg: ServeConfig, on_failure: Callable[[], bool] | None = None) -> DeployResult:
    """Hot-load version ``version``, smoke-test it, switch the stable name to it, or unload it and keep the previous.

    ``on_failure`` (e.g. a registry rollback) runs after a failed smoke test; it returns whether it rolled back.
    """
    name = adapter_name(model_name, version)
    loaded = name in served_models(url)
    load_adapter(url, name, adapter_dir, inplace=loaded)
    smoke = smoke_test(url, name, prompts[:cfg.smoke_max_prompts], check, cfg.smoke_max_tokens, cfg.smoke_min_pass_rate)
    if smoke.passed:
        load_adapter(url, cfg.adapter_name, adapter_dir, inplace=cfg.adapter_name in served_models(url))
        return DeployResult(status="deployed", endpoint=url, adapter=name, serving=cfg.adapter_name, version=version,
                            smoke=smoke, reason=f"smoke test passed ({smoke.pass_rate:.0%} of {smoke.n})")
    unload_adapter(url, name)
    rolled = bool(on_failure()) if on_failure else False
    why = smoke.error or f"smoke test pass rate {smoke.pass_rate:.0%} < {cfg.smoke_min_pass_rate:.0%}"
    return DeployResult(status="rolled_back", endpoint=url, adapter=name, serving=cfg.adapter_name, version=version,
                        smoke=smoke, rolled_back_registry=rolled,
                        reason=f"{why}; {name} unloaded, '{cfg.adapter_name}' keeps the previous weights")


def render_manifests(template_dir: str | Path, out_dir: str | Path, values: dict[str, str]) -> list[Path]:
    """Fill ``${NAME}`` placeholders of the files in ``deployments/vllm/`` (k8s + docker-compose) with ``values``."""
    import string

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for tpl in sorted(Path(template_dir).glob("*.tmpl")):
        text = string.Template(tpl.read_text())
        try:
            rendered = text.substitute(values)
        except KeyError as e:
            raise KeyError(f"{tpl}: no value for placeholder ${{{e.args[0]}}}") from None
        dst = out / tpl.name.removesuffix(".tmpl")
        dst.write_text(rendered)
        written.append(dst)
    if not written:
        raise FileNotFoundError(f"{template_dir}: no *.tmpl manifests")
    return written


def server_info_json(info: ServerInfo) -> str:
    return json.dumps(info.model_dump(), indent=2)


# ---------------------------------------------------------------------------------------------------- from config
def _registry(cfg):
    from flywheel.promote import CHAMPION, alias_version, client_for
    from flywheel.tracking import tracking_uri

    uri = tracking_uri(cfg.state, cfg.registry.tracking_uri)
    name = cfg.registry.model_name or cfg.project.name
    client = client_for(uri)
    version = alias_version(client, name, CHAMPION)
    if version is None:
        raise ValueError(f"registry {name!r} at {uri} has no champion yet: run the flow or `flywheel promote` first")
    return uri, name, version, client.get_model_version(name, str(version))


def fetch_champion(cfg) -> tuple[str, int, Path, str]:
    """(model name, champion version, local adapter folder, base model) of the registry's champion."""
    from flywheel.evaluate import resolve_base_model
    from flywheel.promote import fetch_adapter

    uri, name, version, mv = _registry(cfg)
    _, local = fetch_adapter(uri, name, version, cfg.state / "serving" / adapter_name(name, version))
    return name, version, local, resolve_base_model(cfg, mv.tags)


def serve_champion(cfg, port: int | None = None) -> ServerInfo:
    """Start the server on the champion's base with its adapter under the stable and the versioned name."""
    name, version, local, base = fetch_champion(cfg)
    info = start_server(cfg.serve, base, {cfg.serve.adapter_name: local, adapter_name(name, version): local},
                        cfg.state / "serve" / "vllm.log", port)
    info.champion_version = version
    write_server_info(info, cfg.state)
    return info


def rule_check(cfg) -> CheckFn | None:
    """Smoke-test grader: an answer passes when every configured rule component scores >= 0.5."""
    from flywheel.judge_stage import build_graders, components_of
    from flywheel.rewards.composite import ComponentSpec

    specs = [ComponentSpec(c.name, c.kind, c.weight, getattr(c, "normalize", "none"), dict(c.params))
             for c in components_of(cfg) if c.kind == "rule"]
    if not specs:
        return None
    graders = build_graders(specs, cfg, None)

    def check(prompts: list[list[dict]], answers: list[str]) -> list[float]:
        per = [graders[s.name](prompts, answers) for s in specs]
        return [min(col[i] for col in per) for i in range(len(answers))]

    return check


def smoke_prompts(cfg, prompts_file: str | Path | None = None, run_id: str | None = None) -> list[list[dict]]:
    """Golden prompts: ``prompts_file``, else ``evaluate.golden_set``, else the prompts the release was evaluated on."""
    from flywheel.evaluate import read_golden_set

    path = prompts_file or cfg.evaluate.golden_set
    if path:
        return read_golden_set(path).prompts
    if run_id:
        import mlflow

        from flywheel.tracking import tracking_uri

        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/responses.jsonl",
                                                    tracking_uri=tracking_uri(cfg.state, cfg.registry.tracking_uri))
        return [json.loads(line)["prompt"] for line in Path(local).read_text().splitlines() if line.strip()]
    raise ValueError("deploy: no smoke-test prompts: set evaluate.golden_set or pass --prompts")


def deploy_champion(cfg, prompts_file: str | Path | None = None, check: CheckFn | None = None,
                    url: str | None = None) -> DeployResult:
    """Hot-load the registry's champion into the running server; on a failed smoke test unload it and roll back."""
    from flywheel.promote import PromotionError, rollback
    from flywheel.tracking import tracking_uri

    info = read_server_info(cfg.state)
    url = url or cfg.serve.url or (info.url if info else f"http://{cfg.serve.host}:{cfg.serve.port}")
    _, name, version, mv = _registry(cfg)
    try:
        httpx.get(f"{url}/health", timeout=5).raise_for_status()
    except httpx.HTTPError:
        return DeployResult(status="skipped", endpoint=url, adapter=adapter_name(name, version),
                            serving=cfg.serve.adapter_name, version=version,
                            reason=f"no vLLM server at {url}: start one with `flywheel serve` (champion v{version} stays in the registry)")
    name, version, local, _ = fetch_champion(cfg)

    def on_failure() -> bool:
        if not cfg.serve.rollback_registry_on_failure:
            return False
        try:
            rollback(tracking_uri=tracking_uri(cfg.state, cfg.registry.tracking_uri), model_name=name,
                     state_dir=cfg.state, reason=f"smoke test failed on {url}", expected_champion=version,
                     lock_timeout_s=cfg.registry.lock_timeout_s)
            return True
        except PromotionError:
            return False

    result = deploy(url, name, version, local, smoke_prompts(cfg, prompts_file, mv.run_id),
                    check if check is not None else rule_check(cfg), cfg.serve, on_failure)
    if result.deployed and info is not None:
        info.champion_version = version
        write_server_info(info, cfg.state)
    return result


def render_champion_manifests(cfg, out_dir: str | Path, template_dir: str | Path | None = None) -> list[Path]:
    """Render ``deployments/vllm/*.tmpl`` for the registry's champion (its URI, base model, serve settings)."""
    import re

    uri, name, version, mv = _registry(cfg)
    from flywheel.evaluate import resolve_base_model

    values = {
        "APP": re.sub(r"[^a-z0-9-]", "-", f"{name}-vllm".lower()), "MODEL_NAME": name, "VERSION": str(version),
        "CHAMPION_URI": mv.source, "TRACKING_URI": uri, "BASE_MODEL": resolve_base_model(cfg, mv.tags),
        "SERVED_NAME": cfg.serve.served_model_name, "ADAPTER_NAME": cfg.serve.adapter_name,
        "MAX_MODEL_LEN": str(cfg.serve.max_model_len), "MAX_LORA_RANK": str(cfg.serve.max_lora_rank),
        "MAX_LORAS": str(cfg.serve.max_loras), "PORT": str(cfg.serve.port), "GPUS": str(cfg.serve.gpus),
        "VLLM_IMAGE": cfg.serve.image, "FETCH_IMAGE": cfg.serve.fetch_image,
    }
    tdir = template_dir or Path(__file__).resolve().parents[1] / "deployments" / "vllm"
    return render_manifests(tdir, out_dir, values)
