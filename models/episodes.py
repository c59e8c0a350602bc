"""Multi-turn episodes as one training batch: the exact token streams a policy sampled, with a loss mask.

An agent episode is, token for token, what the policy saw and wrote: per policy turn the ``context`` tokens it was
given (the whole rendered prompt on the first turn; afterwards the rendered tool results and user turns since its
previous message) and the tokens it ``sampled``. Nothing is re-tokenised: the stream the policy sampled from is the
stream it trains on. ``episode_batch`` lays the streams out the way ``PPOTrainer.learn`` reads a rollout batch:
right-aligned (left padding), so every row's sampled tokens fall within its last ``R`` positions, with ``mask`` 1.0
on the sampled tokens only — tool results and user turns are context, never trained on.

>>> ids, attn, mask = episode_batch([[([5, 6], [7, 1]), ([8], [9, 1])]], pad_id=0)
>>> ids.tolist(), mask.tolist()
([[5, 6, 7, 1, 8, 9, 1]], [[1.0, 1.0, 0.0, 1.0, 1.0]])
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Turn = tuple[Sequence[int], Sequence[int]]  # (context_ids, sampled_ids) of one policy turn


def episode_batch(streams: Sequence[Sequence[Turn]], pad_id: int,
                  max_len: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``streams[b]`` = the turns of episode b → input_ids (B, L), attention_mask (B, L), mask (B, R).

    L = the longest stream; R = the longest stream after its first context (the opening prompt), so the mask
    covers every sampled token of every row. ``max_len``: a stream longer than this is an error naming the
    episode (cutting it would train on tokens whose context the policy never had).
    """
    if not streams:
        raise ValueError("episode_batch: no episodes")
    rows: list[list[int]] = []
    sampled: list[list[float]] = []
    for b, turns in enumerate(streams):
        if not turns:
            raise ValueError(f"episode {b}: no policy turn (an episode that never reached the policy cannot train)")
        ids: list[int] = []
        is_sampled: list[float] = []
        for context, out in turns:
            ids += [int(t) for t in context] + [int(t) for t in out]
            is_sampled += [0.0] * len(context) + [1.0] * len(out)
        if max_len is not None and len(ids) > max_len:
            raise ValueError(f"episode {b}: {len(ids)} tokens, more than max_len {max_len}")
        rows.append(ids)
        sampled.append(is_sampled)
    L = max(map(len, rows))
    R = max(len(ids) - len(turns[0][0]) for ids, turns in zip(rows, streams))
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(rows), L), dtype=torch.float32)  # (B, L), cut to (B, R) below
    for b, (ids, is_sampled) in enumerate(zip(rows, sampled)):
        input_ids[b, L - len(ids):] = torch.tensor(ids)
        attention_mask[b, L - len(ids):] = 1
        mask[b, L - len(ids):] = torch.tensor(is_sampled)
    return input_ids, attention_mask, mask[:, L - R:]
