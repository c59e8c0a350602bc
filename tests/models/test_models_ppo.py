"""Every function of models/ppo.py against plain-loop / hand-computed references, with masks and padding."""
import math

import pytest
import torch

from models import ppo


def _batch(seed=0, B=4, T=7, V=11):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # one full-length row, others padded
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    return g, mask, lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_stats_match_plain_python(seed):
    g, mask, lengths = _batch(seed)
    x = torch.randn(mask.shape, generator=g)
    vals = [float(x[i, t]) for i in range(len(x)) for t in range(int(lengths[i]))]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    assert ppo.masked_mean(x, mask).item() == pytest.approx(mean, abs=1e-6)
    assert ppo.masked_var(x, mask).item() == pytest.approx(var, abs=1e-5)
    w = ppo.masked_whiten(x, mask)
    for i in range(len(x)):
        for t in range(x.shape[1]):
            expect = (float(x[i, t]) - mean) / math.sqrt(var + 1e-8) if t < lengths[i] else 0.0
            assert w[i, t].item() == pytest.approx(expect, abs=1e-5)
    kept = ppo.masked_whiten(x, mask, shift_mean=False)
    assert ppo.masked_mean(kept, mask).item() == pytest.approx(mean, abs=1e-5)
    row = ppo.masked_mean(x, mask, dim=1)
    for i in range(len(x)):
        assert row[i].item() == pytest.approx(float(x[i, : lengths[i]].mean()), abs=1e-6)


def test_logprobs_and_entropy_follow_the_temperature_scaled_softmax():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 7, generator=g)
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    for temp in (1.0, 0.7):
        lp = ppo.logprobs_from_logits(logits, tokens, temp)
        ent = ppo.entropy_from_logits(logits, temp)
        for b in range(2):
            for t in range(5):
                z = [float(v) / temp for v in logits[b, t]]
                lse = math.log(sum(math.exp(v) for v in z))
                probs = [math.exp(v - lse) for v in z]
                assert lp[b, t].item() == pytest.approx(z[int(tokens[b, t])] - lse, abs=1e-5)
                assert ent[b, t].item() == pytest.approx(-sum(p * math.log(p) for p in probs), abs=1e-5)


def test_response_mask_includes_the_first_eos_and_nothing_after():
    eos = 2
    responses = torch.tensor([[5, 6, 2, 0, 0], [5, 5, 5, 5, 5], [2, 7, 2, 9, 9]])
    assert ppo.response_mask(responses, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ppo.sequence_lengths(ppo.response_mask(responses, eos)).tolist() == [3, 5, 1]


def test_kl_estimators():
    g = torch.Generator().manual_seed(4)
    lp, ref = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    k1 = ppo.kl_per_token(lp, ref, "k1")
    k3 = ppo.kl_per_token(lp, ref, "k3")
    for b in range(3):
        for t in range(4):
            r = math.exp(float(ref[b, t] - lp[b, t]))
            assert k1[b, t].item() == pytest.approx(float(lp[b, t] - ref[b, t]), abs=1e-6)
            assert k3[b, t].item() == pytest.approx((r - 1) - math.log(r), rel=1e-5, abs=1e-6)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="k2"):
        ppo.kl_per_token(lp, ref, "k2")
    # k1 and k3 are unbiased for KL(p||q) when sampling from p: check on a categorical pair
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    true_kl = float((p * (p / q).log()).sum())
    expect = lambda est: float((p * ppo.kl_per_token(p.log(), q.log(), est)).sum())  # noqa: E731
    assert expect("k1") == pytest.approx(true_kl, abs=1e-6)
    assert expect("k3") == pytest.approx(true_kl, abs=1e-6)


def test_eos_penalty_and_kl_penalized_rewards():
    scores = torch.tensor([1.0, 2.0, -0.5])
    has_eos = torch.tensor([True, False, True])
    assert ppo.eos_penalty(scores, has_eos, -1.0).tolist() == [1.0, -1.0, -0.5]
    assert ppo.eos_penalty(scores, has_eos, None).tolist() == scores.tolist()
    g, mask, lengths = _batch(5, B=3, T=6)
    kl = torch.randn(3, 6, generator=g)
    r = ppo.kl_penalized_rewards(scores, kl, mask, kl_coef=0.1)
    for b in range(3):
        for t in range(6):
            expect = -0.1 * float(kl[b, t]) if t < lengths[b] else 0.0
            if t == lengths[b] - 1:
                expect += float(scores[b])
            assert r[b, t].item() == pytest.approx(expect, abs=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_a_plain_loop_per_sequence(gamma, lam):
    g, mask, lengths = _batch(6, B=5, T=8)
    values, rewards = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    adv, ret = ppo.gae(values, rewards, mask, gamma, lam)
    for b in range(5):
        n = int(lengths[b])
        last = 0.0
        for t in reversed(range(n)):
            nv = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * nv - float(values[b, t])
            last = delta + gamma * lam * last
            assert adv[b, t].item() == pytest.approx(last, abs=1e-5)
            assert ret[b, t].item() == pytest.approx(last + float(values[b, t]), abs=1e-5)
        assert adv[b, n:].abs().sum() == 0 and ret[b, n:].abs().sum() == 0


def test_rloo_advantage_is_return_minus_mean_of_the_other_samples():
    g, mask, lengths = _batch(8, B=6, T=5)
    scores, kl = torch.randn(6, generator=g), torch.rand(6, 5, generator=g)
    adv = ppo.rloo_advantages(scores, kl, mask, kl_coef=0.1, group=3)
    returns = [float(scores[b]) - 0.1 * float((kl[b] * mask[b]).sum()) for b in range(6)]
    for b in range(6):
        others = [returns[j] for j in range(3 * (b // 3), 3 * (b // 3) + 3) if j != b]
        want = returns[b] - sum(others) / 2
        n = int(lengths[b])
        assert adv[b, :n].tolist() == pytest.approx([want] * n, abs=1e-5)
        assert adv[b, n:].abs().sum() == 0
    with pytest.raises(ValueError, match="whole groups"):
        ppo.rloo_advantages(scores[:5], kl[:5], mask[:5], 0.1, group=3)


def test_grpo_advantage_is_the_group_normalised_return():
    g, mask, lengths = _batch(9, B=8, T=5)
    scores, kl = torch.randn(8, generator=g), torch.rand(8, 5, generator=g)
    adv = ppo.grpo_advantages(scores, kl, mask, kl_coef=0.1, group=4)
    returns = [float(scores[b]) - 0.1 * float((kl[b] * mask[b]).sum()) for b in range(8)]
    for b in range(8):
        group = returns[4 * (b // 4): 4 * (b // 4) + 4]
        mean = sum(group) / 4
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / 3)  # Bessel-corrected, as torch.std
        want = (returns[b] - mean) / (std + 1e-6)
        n = int(lengths[b])
        assert adv[b, :n].tolist() == pytest.approx([want] * n, abs=1e-5)
        assert adv[b, n:].abs().sum() == 0
    tied = ppo.grpo_advantages(torch.ones(4), torch.zeros(4, 5), torch.ones(4, 5), kl_coef=0.1, group=4)
    assert tied.abs().sum() == 0  # a group whose returns tie carries no signal
    with pytest.raises(ValueError, match="whole groups"):
        ppo.grpo_advantages(scores[:6], kl[:6], mask[:6], 0.1, group=4)


def test_policy_loss_clipped_surrogate_by_hand():
    g, mask, lengths = _batch(7, B=4, T=6)
    old = torch.randn(4, 6, generator=g)
    new = old + 0.5 * torch.randn(4, 6, generator=g)
    adv = torch.randn(4, 6, generator=g)
    pg, clipfrac, approx_kl = ppo.policy_loss(new, old, adv, mask, clip_coef=0.2)
    losses, clipped, kls = [], [], []
    for b in range(4):
        for t in range(int(lengths[b])):
            ratio = math.exp(float(new[b, t] - old[b, t]))
            l1, l2 = -float(adv[b, t]) * ratio, -float(adv[b, t]) * min(max(ratio, 0.8), 1.2)
            losses.append(max(l1, l2))
            clipped.append(float(l2 > l1))
            kls.append((ratio - 1) - math.log(ratio))
    assert pg.item() == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    assert clipfrac.item() == pytest.approx(sum(clipped) / len(clipped), abs=1e-6)
    assert approx_kl.item() == pytest.approx(sum(kls) / len(kls), abs=1e-5)
    # gradient only through unclipped tokens, and padding never contributes
    new.requires_grad_(True)
    pg, _, _ = ppo.policy_loss(new, old, adv, mask, 0.2)
    pg.backward()
    assert new.grad[mask == 0].abs().sum() == 0
    # on-policy: ratio 1, loss = -mean(adv), nothing clipped
    pg0, cf0, kl0 = ppo.policy_loss(old, old, adv, mask, 0.2)
    assert pg0.item() == pytest.approx(-ppo.masked_mean(adv, mask).item(), abs=1e-6)
    assert cf0.item() == 0 and abs(kl0.item()) < 1e-7


def test_value_loss_clipped_by_hand():
    g, mask, lengths = _batch(8, B=3, T=5)
    old_v, ret = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    v = old_v + torch.randn(3, 5, generator=g)
    loss, frac = ppo.value_loss(v, old_v, ret, mask, clip_coef=0.2)
    terms, fracs = [], []
    for b in range(3):
        for t in range(int(lengths[b])):
            vc = float(old_v[b, t]) + min(max(float(v[b, t] - old_v[b, t]), -0.2), 0.2)
            a, c = (float(v[b, t]) - float(ret[b, t])) ** 2, (vc - float(ret[b, t])) ** 2
            terms.append(max(a, c))
            fracs.append(float(c > a))
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms), abs=1e-5)
    assert frac.item() == pytest.approx(sum(fracs) / len(fracs), abs=1e-6)


def test_explained_variance():
    g, mask, lengths = _batch(9)
    ret = torch.randn(mask.shape, generator=g)
    assert ppo.explained_variance(ret, ret, mask).item() == pytest.approx(1.0)
    const = torch.full_like(ret, 3.0)
    assert ppo.explained_variance(const, ret, mask).item() == pytest.approx(0.0, abs=1e-5)
    noisy = ret + 0.5 * torch.randn(mask.shape, generator=g)
    vals = [(float(ret[i, t]), float(noisy[i, t])) for i in range(len(ret)) for t in range(int(lengths[i]))]
    def var(xs):
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    expect = 1 - var([r - v for r, v in vals]) / var([r for r, _ in vals])
    assert ppo.explained_variance(noisy, ret, mask).item() == pytest.approx(expect, abs=1e-5)


def test_adaptive_kl_controller():
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 1000)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    ctl.update(3.0, 1000)  # error -0.5 → clipped -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    ctl.update(6.6, 500)  # error 0.1
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98 * (1 + 0.1 * 0.05))
    fixed = ppo.AdaptiveKLController(0.05, target=None)
    assert fixed.update(100.0, 10**6) == 0.05
    clone = ppo.AdaptiveKLController(1.0)
    clone.load_state_dict(ctl.state_dict())
    assert clone.value == ctl.value and clone.target == 6.0
