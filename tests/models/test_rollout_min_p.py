"""Min-p sampling in the rollout: every sampled token is at least min_p × the most likely token's probability."""
import torch

from models.policy import ActorCritic, load_base, position_ids_from_mask
from models.rollout import HFRolloutEngine


def _worst_relative_probability(ac: ActorCritic, rollout, temperature: float) -> float:
    """min over sampled response tokens of p(token) / max_v p(v), under softmax(logits / T) of the policy."""
    ids, mask, R = rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1]
    with torch.no_grad(), ac.role("policy"):
        logits = ac.lm(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    probs = torch.softmax(logits[:, -R - 1:-1].float() / temperature, -1)  # (B, R, V)
    picked = probs.gather(-1, rollout.response_ids.unsqueeze(-1)).squeeze(-1)  # (B, R)
    relative = picked / probs.max(-1).values  # (B, R)
    return float(relative[rollout.response_mask > 0].min())


def test_min_p_never_samples_a_token_far_below_the_top_one(tiny_base, tiny_task):
    lm, tok = load_base(tiny_base)
    ac = ActorCritic(lm, with_value=False)
    engine = HFRolloutEngine(ac, tok)
    prompts = [p for p, _, _ in tiny_task[:16]] * 2
    torch.manual_seed(0)
    plain = engine.generate(prompts, max_new_tokens=16, temperature=2.0)
    torch.manual_seed(0)
    truncated = engine.generate(prompts, max_new_tokens=16, temperature=2.0, min_p=0.3)
    assert _worst_relative_probability(ac, plain, 2.0) < 0.3  # at T 2 unlikely tokens do get sampled...
    assert _worst_relative_probability(ac, truncated, 2.0) >= 0.3 - 1e-4  # ...and min-p drops them
