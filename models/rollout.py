"""Batched sampling of responses: Hugging Face ``generate`` with a KV cache everywhere, vLLM (``models.vllm_engine``,
a server from its own venv) where built.

Both engines take chat prompts and return a :class:`Rollout` with the same fields. Sampling follows Huang et al.:
prompts padded on the LEFT, temperature sampling with optional top-p / min-p truncation (``top_k`` off; log-probs are
those of the untruncated ``softmax(logits / T)``, which the truncation only renormalises),
stop at EOS, everything after the first EOS is padding and masked out.
"""
from __future__ import annotations

from dataclasses import dataclass

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
    logprobs: Tensor | None = None  # (B, R) the sampler's log-probs of response_ids (vLLM), 0 on padding; None (HF)

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


def __getattr__(name: str):
    """``VLLMRolloutEngine`` lives in :mod:`models.vllm_engine` (a vLLM server in its own venv, driven over HTTP)."""
    if name == "VLLMRolloutEngine":
        from models.vllm_engine import VLLMRolloutEngine

        return VLLMRolloutEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
