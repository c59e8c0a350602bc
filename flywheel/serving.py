"""The serving client: vLLM's OpenAI-compatible server with the base model + LoRA adapters, driven over HTTP.

The server runs from its own environment (``make vllm-env`` builds ``.venv-vllm``; the command is configurable,
``serve.command``). Adapters are served under two names:
- ``<model>-v<N>``: one per registry version, loaded when the version is deployed;
- ``serve.adapter_name`` (default ``champion``): the stable name clients request, reloaded in place once the new
  version passed its smoke test (the deploy stage, ``tasks/deploy.py``);
- ``gateway.routing.challenger_model`` (default ``challenger``): a canary release, loaded the same way beside the
  champion, which the capture gateway sends its share of the traffic.

Here: the command line and environment, start / stop / health, load and unload adapters at runtime, chat, the smoke
test, the server's info file, and the Kubernetes / docker-compose manifests rendered for the registry's champion.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from pydantic import BaseModel

from flywheel.config.release import ServeConfig
from flywheel.records import SmokeResult

if TYPE_CHECKING:
    from flywheel.config import FlywheelConfig

CheckFn = Callable[[list[list[dict]], list[str]], list[float]]  # rule graders: 1.0 = pass
TEMPLATES = Path(__file__).resolve().parents[1] / "deployments" / "vllm"


class ServerInfo(BaseModel):
    """A running server, as written to ``<state>/serve/server.json``."""

    pid: int
    url: str  # http://host:port (no /v1)
    base_model: str
    adapters: dict[str, str]
    log: str
    started_s: float  # seconds from launch to healthy
    champion_version: int | None = None
    challenger_version: int | None = None  # the canary served as gateway.routing.challenger_model


def adapter_name(model_name: str, version: int) -> str:
    """The served name of one registry version: ``<model>-v<N>``."""
    return f"{model_name}-v{version}"


# ---------------------------------------------------------------------------------------------------- process
def server_command(cfg: ServeConfig, base_model: str | Path, adapters: dict[str, str | Path],
                   port: int | None = None) -> list[str]:
    """The full command line: ``serve.command`` + model, LoRA and network flags."""
    cmd = list(cfg.command) + [
        "--model", str(base_model), "--served-model-name", cfg.served_model_name,
        "--host", cfg.host, "--port", str(port or cfg.port), "--max-model-len", str(cfg.max_model_len),
        "--dtype", cfg.dtype, "--enable-lora", "--max-lora-rank", str(cfg.max_lora_rank),
        "--max-loras", str(cfg.max_loras),
    ]
    if adapters:
        cmd += ["--lora-modules", *[f"{n}={Path(p).resolve()}" for n, p in adapters.items()]]
    return cmd + list(cfg.extra_args)


def server_env(cfg: ServeConfig) -> dict[str, str]:
    """This process's environment + runtime LoRA updating, the CPU KV cache size and no usage stats."""
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


def is_healthy(url: str, timeout_s: float = 5.0) -> bool:
    """One ``/health`` request: is a server answering at ``url``?"""
    try:
        httpx.get(f"{url}/health", timeout=timeout_s).raise_for_status()
    except httpx.HTTPError:
        return False
    return True


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
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def write_server_info(info: ServerInfo, state_dir: str | Path) -> Path:
    path = Path(state_dir) / "serve" / "server.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(info.model_dump_json(indent=2))
    return path


def read_server_info(state_dir: str | Path) -> ServerInfo | None:
    path = Path(state_dir) / "serve" / "server.json"
    return ServerInfo.model_validate_json(path.read_text()) if path.is_file() else None


def server_url(cfg: FlywheelConfig, info: ServerInfo | None = None) -> str:
    """Where the server is: ``serve.url`` if set, else the recorded server's URL, else ``http://host:port``."""
    return cfg.serve.url or (info.url if info else f"http://{cfg.serve.host}:{cfg.serve.port}")


# ---------------------------------------------------------------------------------------------------- adapters
class AdapterRefused(RuntimeError):
    """The server answered a load or unload request with an error (the adapter is not served under that name)."""


def load_adapter(url: str, name: str, path: str | Path, inplace: bool = False) -> None:
    """Load (or with ``inplace`` reload) the LoRA folder ``path`` under the served name ``name``."""
    body = {"lora_name": name, "lora_path": str(Path(path).resolve())}
    if inplace:
        body["load_inplace"] = True
    r = httpx.post(f"{url}/v1/load_lora_adapter", json=body, timeout=120)
    if r.status_code != 200:
        raise AdapterRefused(f"load_lora_adapter {name} from {path}: HTTP {r.status_code}: {r.text[:500]}")


def adapter_misfits(adapter_dir: str | Path, base_dir: str | Path) -> list[str]:
    """LoRA weights of ``adapter_dir`` whose shapes or layers do not fit the base in ``base_dir`` (a Llama-style
    ``config.json``): vLLM pads a smaller adapter into its buffers without a word, so another base's adapter loads
    and answers garbage. [] when they fit, or when either side cannot be read here (vLLM then decides)."""
    import json
    import re
    import struct

    config, weights = Path(base_dir) / "config.json", Path(adapter_dir) / "adapter_model.safetensors"
    try:
        c = json.loads(config.read_text())
        with open(weights, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if n < 100_000_000 else {}
        hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return []
    kv, inter = int(c.get("num_key_value_heads") or heads), int(c.get("intermediate_size") or 0)
    hd = int(c.get("head_dim") or hidden // heads)
    dims = {"q_proj": (hidden, heads * hd), "k_proj": (hidden, kv * hd), "v_proj": (hidden, kv * hd),
            "o_proj": (heads * hd, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}
    misfits = []
    for key, meta in header.items():
        m = re.search(r"layers\.(\d+)\..*?(\w+_proj)\.lora_([AB])\b", key)
        if not m or m[2] not in dims or not isinstance(meta, dict) or len(meta.get("shape", ())) != 2:
            continue
        fan_in, fan_out = dims[m[2]]
        got, want = (meta["shape"][1], fan_in) if m[3] == "A" else (meta["shape"][0], fan_out)
        if got != want or int(m[1]) >= int(c.get("num_hidden_layers", 1 << 30)):
            misfits.append(f"{key} {meta['shape']} (the base's {m[2]} is {fan_in} -> {fan_out}, "
                           f"{c.get('num_hidden_layers')} layers)")
    return misfits


def unload_adapter(url: str, name: str) -> None:
    r = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
    if r.status_code != 200:
        raise AdapterRefused(f"unload_lora_adapter {name}: HTTP {r.status_code}: {r.text[:500]}")


def served_models(url: str) -> list[str]:
    """Names the server answers to: the base's served name and every loaded adapter."""
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
    """Golden prompts through the served adapter; pass when the share of answers passing ``check`` >= min_pass_rate.

    Without ``check`` an answer passes when it is not empty. An adapter that cannot answer fails (``error`` says why).
    """
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


# ---------------------------------------------------------------------------------------------------- champion
def serve_champion(cfg: FlywheelConfig, port: int | None = None) -> ServerInfo:
    """Start the server on the champion's base with its adapter under the stable and the versioned name."""
    from flywheel.base_model import base_model_of
    from flywheel.registry import Registry

    registry = Registry.from_config(cfg)
    champ = registry.require_champion()
    version, local = registry.fetch(champ.version)
    adapters = {cfg.serve.adapter_name: local, adapter_name(registry.model_name, version): local}
    info = start_server(cfg.serve, base_model_of(cfg, champ.base_model), adapters, cfg.state / "serve" / "vllm.log",
                        port)
    info.champion_version = version
    write_server_info(info, cfg.state)
    registry.note_deployment(version, "deployed", f"served as '{cfg.serve.adapter_name}' by `flywheel serve` at "
                                                  f"{info.url} (pid {info.pid})")
    return info


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


def render_champion_manifests(cfg: FlywheelConfig, out_dir: str | Path,
                              template_dir: str | Path | None = None) -> list[Path]:
    """Render ``deployments/vllm/*.tmpl`` for the registry's champion (its URI, base model, serve settings)."""
    import re

    from flywheel.base_model import base_model_of
    from flywheel.registry import Registry

    registry = Registry.from_config(cfg)
    champ = registry.require_champion()
    name, serve = registry.model_name, cfg.serve
    values = {
        "APP": re.sub(r"[^a-z0-9-]", "-", f"{name}-vllm".lower()), "MODEL_NAME": name, "VERSION": str(champ.version),
        "CHAMPION_URI": champ.source or "", "TRACKING_URI": registry.tracking_uri,
        "BASE_MODEL": base_model_of(cfg, champ.base_model), "SERVED_NAME": serve.served_model_name,
        "ADAPTER_NAME": serve.adapter_name, "MAX_MODEL_LEN": str(serve.max_model_len),
        "MAX_LORA_RANK": str(serve.max_lora_rank), "MAX_LORAS": str(serve.max_loras), "PORT": str(serve.port),
        "GPUS": str(serve.gpus), "VLLM_IMAGE": serve.image, "FETCH_IMAGE": serve.fetch_image,
    }
    return render_manifests(template_dir or TEMPLATES, out_dir, values)
