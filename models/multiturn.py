"""Batched sampling from token-id prefixes, for multi-turn agents that keep their own token stream.

A multi-turn policy appends each rendered tool/user turn to its own token ids and samples the next assistant turn
from them, so it must sample from ids, not from chat messages (re-rendering the chat can tokenise differently from
what was sampled). ``sample_from_prefixes`` is that sampler: one batched forward over the left-padded prefixes
fills a KV cache, then one token per step for every row still running. As in ``models.rollout`` (Huang et al.):
left padding, position ids from the attention mask, pure temperature/top-p sampling (no top-k), stop at EOS.

Departures from ``generate``: each row draws its uniforms from its own CPU ``torch.Generator`` seeded from
``seeds[i]`` and samples by inverse CDF, so a row's sample depends on its seed and prefix only, not on which other
rows share the batch nor on the device's RNG. The returned log-probs are under ``softmax(logits / temperature)``
before top-p filtering (what ``logprobs_from_logits`` recomputes at training time); with ``top_p < 1`` they are
not the filtered distribution's.
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.policy import position_ids_from_mask


def _left_pad(prefixes: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """Left-padded ids and mask, both (B, P) long."""
    width = max(map(len, prefixes))
    ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for i, prefix in enumerate(prefixes):
        ids[i, width - len(prefix):] = torch.tensor(prefix, dtype=torch.long)
        mask[i, width - len(prefix):] = 1
    return ids.to(device), mask.to(device)


def _top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p``. probs: (B, V) → (B, V)."""
    sorted_probs, order = probs.sort(-1, descending=True)  # (B, V)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # (B, V) mass of the tokens ranked above
    keep_sorted = mass_before < top_p  # (B, V) the top token is always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # (B, V) back in vocabulary order
    return probs * keep


def _pick(logits: Tensor, temperature: float, top_p: float, generators: list[torch.Generator]
          ) -> tuple[Tensor, Tensor]:
    """Next token and its log-prob for each row. logits: (B, V) → tokens (B,) long, logprobs (B,) float."""
    logits = logits.float()  # (B, V)
    if temperature == 0:
        tokens = logits.argmax(-1)  # (B,)
        logp = torch.log_softmax(logits, -1)  # (B, V)
    else:
        logp = torch.log_softmax(logits / temperature, -1)  # (B, V)
        probs = logp.double().exp()  # (B, V) float64: the inverse CDF must not lose the tail
        if top_p < 1.0:
            probs = _top_p_filter(probs, top_p)
        cdf = probs.cumsum(-1)  # (B, V)
        uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])  # (B,)
        targets = uniforms.to(cdf.device).unsqueeze(-1) * cdf[:, -1:]  # (B, 1) in [0, total mass)
        tokens = torch.searchsorted(cdf, targets, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)  # (B,)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _cache_name(out) -> str:
    """The KV cache's name, as output field and forward argument: ``cache`` from transformers 5.2x (which
    deprecates ``past_key_values``, to be removed in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in out else "past_key_values"


def _check(prefixes: list[list[int]], seeds: list[int], max_new_tokens: int, temperature: float,
           top_p: float) -> None:
    if not prefixes or any(len(p) == 0 for p in prefixes):
        raise ValueError("sample_from_prefixes: every prefix needs at least one token")
    if len(seeds) != len(prefixes):
        raise ValueError(f"sample_from_prefixes: {len(seeds)} seeds for {len(prefixes)} prefixes")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_from_prefixes(model, tokenizer, prefixes: list[list[int]], *, max_new_tokens: int, temperature: float,
                         seeds: list[int], top_p: float = 1.0) -> list[tuple[list[int], list[float]]]:
    """Sample a continuation of each token-id prefix in one batch; per row ``(sampled ids, their log-probs)``.

    A row's ids run up to and including its first ``tokenizer.eos_token_id``, or stop at ``max_new_tokens``.
    ``temperature == 0`` is greedy (log-probs of the raw logits). ``model`` is any Hugging Face causal LM; for an
    ``ActorCritic`` pass ``ac.lm`` inside ``with ac.role("policy"):``. Runs without grad, in eval mode.
    """
    _check(prefixes, seeds, max_new_tokens, temperature, top_p)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    samples: list[list[int]] = [[] for _ in prefixes]
    logprobs: list[list[float]] = [[] for _ in prefixes]
    if max_new_tokens == 0:
        return list(zip(samples, logprobs))
    device = next(model.parameters()).device
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]  # CPU: device-independent draws
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids, mask = _left_pad(prefixes, pad_id, device)  # (B, P), (B, P)
            out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                        use_cache=True, logits_to_keep=1)
            cache_arg = _cache_name(out)
            running = list(range(len(prefixes)))  # rows still sampling
            for step in range(max_new_tokens):
                logits = out.logits[:, -1]  # (B, V) next-token scores of every row
                tokens, token_logp = _pick(logits, temperature, top_p, generators)  # (B,), (B,)
                picked, picked_logp = tokens.tolist(), token_logp.tolist()  # one device sync per step
                for row in running:
                    samples[row].append(picked[row])
                    logprobs[row].append(picked_logp[row])
                running = [row for row in running if samples[row][-1] != eos_id]
                if not running or step == max_new_tokens - 1:
                    break
                # every row takes one more token (ended rows too, ignored) so the cache stays rectangular
                mask = torch.cat([mask, mask.new_ones((len(prefixes), 1))], 1)  # (B, P + step + 1)
                positions = mask.sum(-1, keepdim=True) - 1  # (B, 1) position of the new token
                out = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=positions,
                            use_cache=True, **{cache_arg: out[cache_arg]})
    finally:
        model.train(was_training)
    return list(zip(samples, logprobs))
