"""PPO for language models as pure torch functions that read like the math.

Shapes: ``B`` = sequences in the batch, ``T`` = response length (padded), ``V`` = vocabulary.
A ``mask`` (B, T) is 1.0 on real response tokens (up to and including the first EOS) and 0.0 on padding.
Names follow CleanRL (``ratio``, ``pg_loss1``, ``pg_loss2``, ``v_loss``, ``approx_kl``, ``clipfrac``).

Implementation details from Huang et al., "The N+ implementation details of RLHF with PPO" (2024):
* log-probs are taken from ``logits / temperature`` so that they match the sampling distribution (§ temperature);
* the per-token reward is ``-β·KL_t`` plus the sequence score at the last response token (§ reward shaping);
* responses that never emit EOS can get a fixed score instead of their reward (the "EOS trick");
* advantages are whitened over the valid tokens of the batch; rewards optionally (not on by default);
* the value loss is clipped around the rollout values; ``approx_kl`` is the k3 estimator ``(r - 1) - log r``;
* the KL coefficient adapts to a target KL (Ziegler et al. 2019).

Advantage estimators, one per run: ``gae`` (with a value function), and the critic-free ``rloo_advantages``
(leave-one-out baseline) and ``grpo_advantages`` (group mean and std) over the samples of each prompt.
"""
from __future__ import annotations

import torch
from torch import Tensor


# ---------------------------------------------------------------------------------------------- masked statistics
def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over everything, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the masked positions (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over masked positions; ``shift_mean=False`` keeps the mean (used for rewards). Padding → 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ---------------------------------------------------------------------------------------------- log-probs
def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log π(tokens) under ``softmax(logits / temperature)``.

    logits: (B, T, V) scores for the token at each position; tokens: (B, T) int → (B, T) float.
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy H(π(·|s_t)) per position. logits: (B, T, V) → (B, T)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return -(logp.exp() * logp).sum(-1)


def response_mask(responses: Tensor, eos_token_id: int) -> Tensor:
    """1.0 on tokens up to and including the first EOS, 0.0 after. responses: (B, T) → (B, T) float."""
    is_eos = (responses == eos_token_id).long()  # (B, T)
    eos_seen_before = torch.cumsum(is_eos, dim=1) - is_eos  # (B, T) EOS strictly before t
    return (eos_seen_before == 0).float()


def sequence_lengths(mask: Tensor) -> Tensor:
    """Number of valid response tokens per sequence. mask: (B, T) → (B,) long."""
    return mask.sum(1).long()


# ---------------------------------------------------------------------------------------------- rewards
def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token KL(π || π_ref) estimate from samples of π. logprobs, ref_logprobs: (B, T) → (B, T).

    k1 = log π - log π_ref (unbiased, can be negative); k3 = (r - 1) - log r with r = π_ref / π (≥ 0, lower variance).
    """
    logr = ref_logprobs - logprobs  # (B, T) log(π_ref / π)
    if estimator == "k1":
        return -logr
    if estimator == "k3":
        return torch.expm1(logr) - logr
    raise ValueError(f"kl estimator: expected 'k1' or 'k3', got {estimator!r}")


def eos_penalty(scores: Tensor, has_eos: Tensor, penalty: float | None) -> Tensor:
    """The EOS trick: a response without EOS gets ``penalty`` as its score. scores, has_eos: (B,) → (B,)."""
    if penalty is None:
        return scores
    return torch.where(has_eos, scores, torch.full_like(scores, penalty))


def kl_penalized_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """r_t = -β·KL_t on every response token, plus the sequence score on the last valid token.

    scores: (B,) ; kl, mask: (B, T) → rewards (B, T), zero on padding.
    """
    rewards = -kl_coef * kl * mask  # (B, T)
    last = (sequence_lengths(mask) - 1).clamp(min=0)  # (B,) index of the last valid token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


# ---------------------------------------------------------------------------------------------- advantages
def gae(values: Tensor, rewards: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over each response; the value after the last valid token is 0.

    values, rewards, mask: (B, T) → advantages (B, T), returns (B, T) = advantages + values (zero on padding).
    """
    values, rewards = values * mask, rewards * mask
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        nextvalues = values[:, t + 1] if t + 1 < T else torch.zeros_like(lastgaelam)  # (B,)
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam * (mask[:, t + 1] if t + 1 < T else 0.0)
        advantages[:, t] = lastgaelam
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def grouped_returns(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float, group: int, estimator: str) -> Tensor:
    """Each response's KL-penalised return R = score - β·Σ_t KL_t, one row per prompt.

    scores: (B,), kl, mask: (B, T), rows grouped by prompt (``group`` consecutive rows each) → returns (P, k).
    """
    B = scores.shape[0]
    if group < 2 or B % group:
        raise ValueError(f"{estimator} needs >= 2 samples per prompt and whole groups; got group={group}, batch={B}")
    returns = scores - kl_coef * (kl * mask).sum(1)  # (B,)
    return returns.view(B // group, group)  # (P, k)


def rloo_advantages(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float, group: int) -> Tensor:
    """Leave-one-out advantages (RLOO, Ahmadian et al. 2024): each response's KL-penalised return minus the mean return
    of the other responses to the same prompt, on every response token. No value function: with a sparse reward at
    the end of a short answer, a value head that starts at zero is noise for many updates.

    scores: (B,), kl, mask: (B, T), rows grouped by prompt (``group`` consecutive rows each) → advantages (B, T).
    """
    g = grouped_returns(scores, kl, mask, kl_coef, group, "rloo")  # (P, k)
    baseline = (g.sum(1, keepdim=True) - g) / (group - 1)  # (P, k) mean of the others
    return (g - baseline).reshape(-1, 1) * mask  # (B, T)


def grpo_advantages(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float, group: int,
                    eps: float = 1e-6) -> Tensor:
    """Group-normalised advantages (GRPO, Shao et al. 2024): each response's KL-penalised return minus the mean
    return of its prompt's group, divided by the group's standard deviation (Bessel-corrected) + ``eps``, on every
    response token. No value function.

    Departure from the paper: the KL penalty is in the return (as in ``rloo_advantages``), not a separate loss term,
    so a group whose scores tie is ranked by its KL alone (towards the reference).

    scores: (B,), kl, mask: (B, T), rows grouped by prompt (``group`` consecutive rows each) → advantages (B, T).
    """
    g = grouped_returns(scores, kl, mask, kl_coef, group, "grpo")  # (P, k)
    mean, std = g.mean(1, keepdim=True), g.std(1, keepdim=True)  # (P, 1), (P, 1)
    return ((g - mean) / (std + eps)).reshape(-1, 1) * mask  # (B, T)


# ---------------------------------------------------------------------------------------------- losses
def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_coef: float = 0.2
) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate objective (as a loss to minimise). All inputs (B, T).

    Returns (pg_loss, clipfrac, approx_kl) as scalars; ``approx_kl`` is k3 of the new vs the rollout policy.
    """
    logratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(logratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((pg_loss2 > pg_loss1).float(), mask)
        approx_kl = masked_mean((ratio - 1) - logratio, mask)
    return pg_loss, clipfrac, approx_kl


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_coef: float = 0.2
) -> tuple[Tensor, Tensor]:
    """Clipped value loss 0.5·max((V - R)², (V_clipped - R)²). All inputs (B, T) → (v_loss, vf_clipfrac)."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
    v_loss_unclipped = (values - returns) ** 2
    v_loss_clipped = (v_clipped - returns) ** 2
    v_loss = 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), mask)
    with torch.no_grad():
        vf_clipfrac = masked_mean((v_loss_clipped > v_loss_unclipped).float(), mask)
    return v_loss, vf_clipfrac


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over masked positions (1 = perfect, 0 = no better than a constant)."""
    var_returns = masked_var(returns, mask)
    return 1 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)


# ---------------------------------------------------------------------------------------------- KL controller
class AdaptiveKLController:
    """β ← β·(1 + clip(KL/target - 1, ±0.2)·n/horizon) (Ziegler et al. 2019); ``target=None`` keeps β fixed."""

    def __init__(self, init_kl_coef: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], state["horizon"]
