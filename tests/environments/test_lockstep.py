"""The lockstep collector: the same records as the threaded one, one batched call per step, waves of any size,
policy failures recorded per wave, and the policy's token stream stored exactly."""
import json

import pytest

from environments.acme_shop import load_domain
from environments.collect import PolicyOutput, ReferencePolicy, collect, episode_seed
from environments.lockstep import collect_batched

DOMAIN = load_domain()
IDS = [t.id for t in DOMAIN.tasks]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_timing(path):
    records = _lines(path)
    for record in records:
        assert set(record["timing"]) == {"policy_s", "env_s"} and min(record["timing"].values()) >= 0
        del record["timing"]
    return records


def batched(policy, calls=None):
    """A per-episode policy as a batch policy; ``calls`` collects the size of each batched call."""
    def batch_policy(messages, episodes):
        if calls is not None:
            calls.append(len(episodes))
        return [policy(m, e) for m, e in zip(messages, episodes)]
    return batch_policy


def test_the_oracle_writes_the_same_records_as_collect_on_every_task(tmp_path):
    oracle, calls = ReferencePolicy(DOMAIN), []
    summary = collect_batched(DOMAIN, batched(oracle, calls), trials=2, out_path=tmp_path / "b.jsonl",
                              model_version="m1", batch_size=64)
    threaded = collect(DOMAIN, oracle, trials=2, workers=4, out_path=tmp_path / "t.jsonl", model_version="m1")
    assert _without_timing(tmp_path / "b.jsonl") == _without_timing(tmp_path / "t.jsonl")
    assert (summary.episodes, summary.successes, summary.policy_errors) == (90, 90, 0)
    assert summary.success_by_task == threaded.success_by_task and summary.end_reasons == threaded.end_reasons
    assert summary.workers == 64 and summary.model_version == "m1" and summary.pass_hat_k(2) == 1.0
    assert calls[0] == 64 and sum(calls) == sum(r["steps"] for r in _lines(tmp_path / "b.jsonl"))
    second = calls.index(90 - 64)  # the second wave's first call
    for wave in (calls[:second], calls[second:]):  # episodes drop out of their wave's calls as they end
        assert all(b <= a for a, b in zip(wave, wave[1:]))


def test_waves_smaller_than_the_run_give_the_same_file(tmp_path):
    oracle, calls = ReferencePolicy(DOMAIN), []
    collect_batched(DOMAIN, batched(oracle), task_ids=IDS[:7], trials=2, out_path=tmp_path / "all.jsonl")
    summary = collect_batched(DOMAIN, batched(oracle, calls), task_ids=IDS[:7], trials=2, batch_size=3,
                              out_path=tmp_path / "three.jsonl")
    assert _without_timing(tmp_path / "three.jsonl") == _without_timing(tmp_path / "all.jsonl")
    assert summary.episodes == summary.successes == 14 and summary.workers == 3
    assert max(calls) == 3 and calls.count(3) >= 4  # 5 waves (3+3+3+3+2), each opened by a full call


def test_a_raising_batch_policy_ends_its_wave_and_the_run_goes_on(tmp_path):
    oracle, first = ReferencePolicy(DOMAIN), sorted(IDS[:4])[0]

    def flaky(messages, episodes):
        if any(e.task_id == first for e in episodes):
            raise RuntimeError("model server down")
        return [oracle(m, e) for m, e in zip(messages, episodes)]

    summary = collect_batched(DOMAIN, flaky, task_ids=IDS[:4], trials=1, batch_size=2, out_path=tmp_path / "f.jsonl")
    assert (summary.episodes, summary.successes, summary.policy_errors) == (4, 2, 2)
    records = {r["task_id"]: r for r in _lines(tmp_path / "f.jsonl")}
    for task_id in sorted(IDS[:4])[:2]:  # the first wave, which holds ``first``
        assert records[task_id]["end_reason"] == "policy_error: RuntimeError: model server down"
        assert records[task_id]["turns"] == [] and records[task_id]["reward"] == 0.0
        assert [m["role"] for m in records[task_id]["messages"]] == ["system", "user"]
    assert all(records[t]["reward"] == 1.0 for t in sorted(IDS[:4])[2:])


@pytest.mark.parametrize("answer, message", [
    (lambda n: ["Hello?"] * (n + 1), "policy_error: ValueError: batch policy returned {n1} outputs for {n} episodes"),
    (lambda n: "Hello?", "policy_error: TypeError: batch policy returned one str, expected a list of outputs"),
])
def test_a_wrong_number_of_outputs_is_a_policy_error(tmp_path, answer, message):
    summary = collect_batched(DOMAIN, lambda messages, episodes: answer(len(episodes)), task_ids=IDS[:3],
                              out_path=tmp_path / "w.jsonl")
    assert summary.policy_errors == 3 and summary.end_reasons == {"policy_error": 3}
    assert [r["end_reason"] for r in _lines(tmp_path / "w.jsonl")] == [message.format(n=3, n1=4)] * 3


def test_a_malformed_output_ends_only_its_episode(tmp_path):
    oracle = ReferencePolicy(DOMAIN)

    def one_bad(messages, episodes):
        return [42 if e.task_id == IDS[0] else oracle(m, e) for m, e in zip(messages, episodes)]

    summary = collect_batched(DOMAIN, one_bad, task_ids=IDS[:3], out_path=tmp_path / "m.jsonl")
    assert (summary.successes, summary.policy_errors) == (2, 1)
    bad = next(r for r in _lines(tmp_path / "m.jsonl") if r["task_id"] == IDS[0])
    assert bad["end_reason"] == "policy_error: TypeError: policy returned int, expected str or PolicyOutput"


def test_context_ids_token_ids_and_logprobs_round_trip(tmp_path):
    """Each turn stores what the policy appended (context) and sampled; their concatenation is its stream."""
    oracle, streams = ReferencePolicy(DOMAIN), {}

    def sampler(messages, episode):
        turn = sum(m["role"] == "assistant" for m in messages)
        context = [episode.seed % 997, turn, len(messages)]
        sampled = [2**31 + turn, 0, 151643]
        streams.setdefault((episode.task_id, episode.trial), []).extend(context + sampled)
        return PolicyOutput(oracle(messages, episode), token_ids=sampled, logprobs=[-0.1 - turn, -1e-12, -0.0],
                            context_ids=context)

    collect_batched(DOMAIN, batched(sampler), task_ids=IDS[:3], trials=2, out_path=tmp_path / "c.jsonl")
    records = _lines(tmp_path / "c.jsonl")
    assert len(records) == 6
    for record in records:
        assert record["seed"] == episode_seed(0, record["task_id"], record["trial"]) and record["reward"] == 1.0
        stream = [t for turn in record["turns"] for t in turn["context_ids"] + turn["token_ids"]]
        assert stream == streams[(record["task_id"], record["trial"])]
        assert [turn["logprobs"] for turn in record["turns"]] == [[-0.1 - k, -1e-12, -0.0]
                                                                  for k in range(record["steps"])]


def test_malformed_context_ids_are_a_policy_error(tmp_path):
    bad = PolicyOutput("hi?", context_ids=[1, "x"])
    collect_batched(DOMAIN, lambda messages, episodes: [bad] * len(episodes), task_ids=IDS[:2],
                    out_path=tmp_path / "x.jsonl")
    assert {r["end_reason"] for r in _lines(tmp_path / "x.jsonl")} == {
        "policy_error: TypeError: PolicyOutput.context_ids must be a list of ints"}


@pytest.mark.parametrize("kwargs, match", [({"batch_size": 0}, "batch_size must be at least 1"),
                                           ({"trials": 0}, "trials must be at least 1")])
def test_bad_arguments_are_rejected_before_any_episode(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        collect_batched(DOMAIN, lambda m, e: ["hi"] * len(e), out_path=tmp_path / "x.jsonl", **kwargs)
    assert not (tmp_path / "x.jsonl").exists()
