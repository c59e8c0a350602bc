"""The decoder: one base model with named LoRA adapters on the same copy of its weights, and what it answers.

``AdapterPolicies(base, {"candidate": dir, "champion": dir})`` loads the base once (``models.policy.load_base``: left
padding, pad ≠ EOS, eval mode) and each adapter under its name; the role ``"base"`` is the base with every adapter
disabled. ``generate`` decodes chat prompts in batches (greedy at temperature 0, sampled above it); ``measure``
scores given answers: exact KL(role || base) over the whole vocabulary, mean token entropy and length in tokens.
``decode(base, adapter, prompts)`` is the one-adapter (or bare base) shortcut.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from models.policy import load_base, resolve_device
from models.rollout import encode_prompts, finish, render_prompts

Prompt = list[dict]  # chat messages: [{"role": ..., "content": ...}, ...]
BASE = "base"


class AdapterPolicies:
    """Base model + named LoRA adapters on ONE copy of the base (peft); role ``"base"`` = adapters disabled."""

    def __init__(self, base_path: str | Path, adapters: dict[str, str | Path], *, batch_size: int,
                 max_new_tokens: int, temperature: float = 0.0, seed: int = 0, device: str = "cpu",
                 dtype: str = "float32", max_prompt_len: int = 2048):
        if BASE in adapters:
            raise ValueError(f"adapters: {BASE!r} is the bare base model's role, not an adapter name")
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.temperature, self.seed, self.max_prompt_len = temperature, seed, max_prompt_len
        self.device = resolve_device(device)
        model, self.tok = load_base(base_path, dtype, str(self.device))  # same tokenizer/pad handling as training
        if adapters:
            from peft import PeftModel

            names = list(adapters)
            model = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(str(adapters[name]), adapter_name=name)
        self.roles = [BASE, *adapters]
        self.model = model.to(self.device).eval()

    def _role(self, role: str):
        """Context in which the model is ``role``: the base with adapters disabled, or one named adapter active."""
        if role not in self.roles:
            raise KeyError(f"unknown role {role!r}: loaded {self.roles}")
        if role == BASE:
            return self.model.disable_adapter() if len(self.roles) > 1 else contextlib.nullcontext()
        self.model.set_adapter(role)
        return contextlib.nullcontext()

    def _prompt_ids(self, prompts: list[Prompt]) -> list[list[int]]:
        return [self.tok(t, add_special_tokens=False)["input_ids"] for t in render_prompts(self.tok, prompts)]

    def generate(self, role: str, prompts: list[Prompt]) -> list[str]:
        """The role's answer to each prompt (special tokens dropped, whitespace stripped), ``batch_size`` at a time.

        Prompts are encoded and answers cut at the first EOS exactly as PPO's rollouts are (``models.rollout``)."""
        tok, sample = self.tok, self.temperature > 0
        if sample:
            torch.manual_seed(self.seed)
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            query, qmask = encode_prompts(tok, prompts[i:i + self.batch_size], self.max_prompt_len, self.device)
            with torch.no_grad(), self._role(role):
                gen = self.model.generate(input_ids=query, attention_mask=qmask, max_new_tokens=self.max_new_tokens,
                                          do_sample=sample, temperature=self.temperature if sample else None,
                                          top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
            answers = finish(tok, query, qmask, gen[:, query.shape[1]:]).completions  # (b,) cut at the first EOS
            out += [t.strip() for t in answers]
        return out

    def _answer_batch(self, prompts: list[Prompt], completions: list[str]):
        """Right-padded prompt + answer + EOS: ``input_ids``, ``attention_mask`` (b, T), and ``mask`` (b, T-1),
        1 where position t+1 is an answer token (the positions whose next-token distribution is measured)."""
        tok = self.tok
        p_ids = self._prompt_ids(prompts)
        r_ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions]
        seqs = [p + r for p, r in zip(p_ids, r_ids)]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tok.pad_token_id)  # (b, T)
        attn = torch.zeros_like(ids)  # (b, T)
        mask = torch.zeros(len(seqs), width - 1)  # (b, T-1)
        for j, (p, s) in enumerate(zip(p_ids, seqs)):
            ids[j, :len(s)], attn[j, :len(s)] = torch.tensor(s), 1
            mask[j, len(p) - 1:len(s) - 1] = 1
        return ids.to(self.device), attn.to(self.device), mask.to(self.device)

    def _next_token_logprobs(self, role: str, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """(b, T-1, V) log π_role(· | tokens ≤ t), in float32."""
        with self._role(role):
            return torch.log_softmax(self.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)

    def measure(self, role: str, prompts: list[Prompt], completions: list[str]) -> dict[str, list[float]]:
        """Per answer: ``kl`` = KL(π_role || π_base) summed over answer tokens (nats), ``entropy`` = mean token
        entropy of π_role, ``length`` = answer tokens (EOS included)."""
        kl_out, ent_out, len_out = [], [], []
        for i in range(0, len(prompts), self.batch_size):
            ids, attn, mask = self._answer_batch(prompts[i:i + self.batch_size], completions[i:i + self.batch_size])
            with torch.no_grad():
                logp = self._next_token_logprobs(role, ids, attn)  # (b, T-1, V)
                logq = self._next_token_logprobs(BASE, ids, attn)  # (b, T-1, V)
            p = logp.exp()
            kl_t = (p * (logp - logq)).sum(-1)  # (b, T-1) KL(π_role || π_base) at each position
            ent_t = -(p * logp).sum(-1)  # (b, T-1)
            n = mask.sum(-1).clamp(min=1)  # (b,)
            kl_out += (kl_t * mask).sum(-1).tolist()
            ent_out += ((ent_t * mask).sum(-1) / n).tolist()
            len_out += mask.sum(-1).tolist()
        return {"kl": kl_out, "entropy": ent_out, "length": len_out}


def decode(base_path: str | Path, adapter: str | Path | None, prompts: list[Prompt], *, max_new_tokens: int = 48,
           batch_size: int = 16, temperature: float = 0.0, seed: int = 0, device: str = "cpu",
           dtype: str = "float32") -> list[str]:
    """Answers of base + ``adapter`` (the bare base when ``adapter`` is None) to chat ``prompts``; greedy by default."""
    policies = AdapterPolicies(base_path, {} if adapter is None else {"adapter": adapter}, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, device=device,
                               dtype=dtype)
    return policies.generate(BASE if adapter is None else "adapter", prompts)
