"""The trajectory collector: the oracle succeeds everywhere in parallel, the file is sorted and the same for any
worker count, sampled tokens are stored exactly, policy failures are recorded per episode, and pass^k follows."""
import json
import threading
from dataclasses import replace

import pytest

from environments.acme_shop import load_domain
from environments.collect import Episode, PolicyOutput, ReferencePolicy, collect, episode_seed
from environments.env import pass_hat_k
from environments.synthetic import read_trajectories
from environments.users import STOP

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


def test_the_oracle_succeeds_on_every_task_and_the_file_is_sorted_and_worker_independent(tmp_path):
    policy = ReferencePolicy(DOMAIN)
    four = collect(DOMAIN, policy, trials=2, workers=4, out_path=tmp_path / "four.jsonl", model_version="m1")
    assert (four.episodes, four.successes, four.success_rate, four.mean_reward) == (90, 90, 1.0, 1.0)
    assert four.workers == 4 and four.policy_errors == 0 and four.pass_hat_k(2) == 1.0
    assert sorted(four.success_by_task) == sorted(IDS)
    records = _lines(tmp_path / "four.jsonl")
    keys = [(r["task_id"], r["trial"]) for r in records]
    assert keys == sorted((t, k) for t in IDS for k in range(2))
    for record in records:
        task = DOMAIN.task(record["task_id"])
        assert record["reward"] == 1.0 and record["model_version"] == "m1"
        assert record["end_reason"] in ("user_stop", "transfer") and record["tool_errors"] == {}
        assert record["seed"] == episode_seed(0, record["task_id"], record["trial"])
        assert record["steps"] == len(record["turns"]) == len(record["rewards"])
        assert record["rewards"] == [0.0] * (record["steps"] - 1) + [1.0]
        assistant = [m for m in record["messages"] if m["role"] == "assistant"]
        assert len(assistant) == record["steps"] and record["messages"][0]["role"] == "system"
        called = [c["function"]["name"] for m in assistant for c in m.get("tool_calls", [])]
        assert called == [a.name for a in task.evaluation_criteria.actions]
        assert all(t["token_ids"] is None and t["logprobs"] is None for t in record["turns"])
        if record["end_reason"] == "user_stop":
            assert record["messages"][-1] == {"role": "user", "content": STOP}
    one = collect(DOMAIN, policy, trials=2, workers=1, out_path=tmp_path / "one.jsonl", model_version="m1")
    assert one.success_by_task == four.success_by_task and one.workers == 1
    assert _without_timing(tmp_path / "one.jsonl") == _without_timing(tmp_path / "four.jsonl")
    assert read_trajectories(tmp_path / "four.jsonl") == records


def test_concurrent_write_episodes_never_share_database_state(tmp_path):
    """8 workers, 3 trials of every write task at once: each episode's DB check still passes (a write leaked
    from another episode would change the hash or make the repeated cancel fail) and the template is untouched."""
    writes = [t.id for t in DOMAIN.tasks if any(a.name in ("cancel_order", "refund_order")
                                                for a in t.evaluation_criteria.actions)]
    assert len(writes) >= 5
    before = DOMAIN.db.state_hash()
    summary = collect(DOMAIN, ReferencePolicy(DOMAIN), task_ids=writes, trials=3, workers=8,
                      out_path=tmp_path / "w.jsonl")
    assert summary.successes == summary.episodes == 3 * len(writes)
    assert all(r["checks"]["DB"] is True for r in _lines(tmp_path / "w.jsonl"))
    assert DOMAIN.db.state_hash() == before


def test_token_ids_and_logprobs_are_stored_exactly(tmp_path):
    oracle = ReferencePolicy(DOMAIN)
    awkward = [-0.1, -1e-12, -3.141592653589793, -0.0, -123.456789012345678]

    def sampler(messages, episode):
        text = oracle(messages, episode)
        turn = sum(m["role"] == "assistant" for m in messages)
        ids = [episode.seed % 1000, turn, 2**31 + turn, 0, 151643]
        return PolicyOutput(text=text, token_ids=ids, logprobs=[x - turn for x in awkward])

    task_ids = IDS[:3]
    collect(DOMAIN, sampler, task_ids=task_ids, trials=2, workers=3, out_path=tmp_path / "t.jsonl")
    records = _lines(tmp_path / "t.jsonl")
    assert len(records) == 6
    for record in records:
        for turn, stored in enumerate(record["turns"]):
            assert stored["token_ids"] == [record["seed"] % 1000, turn, 2**31 + turn, 0, 151643]
            assert stored["logprobs"] == [x - turn for x in awkward]
            assert all(type(x) is float for x in stored["logprobs"])
        assistant = [m for m in record["messages"] if m["role"] == "assistant"]
        assert [t["text"] for t in record["turns"]][-1].startswith("All done.")
        assert assistant[-1]["content"] == record["turns"][-1]["text"]


def test_a_raising_policy_ends_only_its_episode(tmp_path):
    oracle = ReferencePolicy(DOMAIN)
    calls = {"n": 0}
    lock = threading.Lock()

    def flaky(messages, episode: Episode):
        with lock:
            calls["n"] += 1
        if episode.trial == 1:
            raise RuntimeError(f"model server down for {episode.task_id}")
        return oracle(messages, episode)

    task_ids = IDS[:5]
    summary = collect(DOMAIN, flaky, task_ids=task_ids, trials=2, workers=4, out_path=tmp_path / "f.jsonl")
    assert (summary.episodes, summary.successes, summary.policy_errors) == (10, 5, 5)
    assert summary.end_reasons["policy_error"] == 5
    for record in _lines(tmp_path / "f.jsonl"):
        if record["trial"] == 1:
            assert record["end_reason"] == f"policy_error: RuntimeError: model server down for {record['task_id']}"
            assert record["reward"] == 0.0 and record["turns"] == [] and record["steps"] == 0
            assert [m["role"] for m in record["messages"]] == ["system", "user"]
        else:
            assert record["reward"] == 1.0


@pytest.mark.parametrize("bad, message", [
    (42, "policy_error: TypeError: policy returned int, expected str or PolicyOutput"),
    (PolicyOutput("hi?", token_ids=[1, 2], logprobs=[-0.5]),
     "policy_error: ValueError: PolicyOutput has 2 token_ids but 1 logprobs"),
    (PolicyOutput("hi?", token_ids=["a"]), "policy_error: TypeError: PolicyOutput.token_ids must be a list of ints"),
])
def test_a_malformed_policy_output_is_a_policy_error(tmp_path, bad, message):
    summary = collect(DOMAIN, lambda messages: bad, task_ids=IDS[:2], workers=2, out_path=tmp_path / "b.jsonl")
    assert summary.policy_errors == 2
    assert [r["end_reason"] for r in _lines(tmp_path / "b.jsonl")] == [message, message]


def test_pass_hat_k_from_a_policy_that_succeeds_on_alternate_trials(tmp_path):
    oracle = ReferencePolicy(DOMAIN)

    def alternate(messages, episode):
        return oracle(messages, episode) if episode.trial % 2 == 0 else "Goodbye!"

    task_ids = IDS[:6]
    summary = collect(DOMAIN, alternate, task_ids=task_ids, trials=4, workers=4, out_path=tmp_path / "p.jsonl")
    assert summary.success_by_task == {t: [True, False, True, False] for t in task_ids}
    assert summary.successes == 12 and summary.mean_reward == 0.5
    assert summary.pass_hat_k(1) == pytest.approx(0.5)
    assert summary.pass_hat_k(2) == pytest.approx(1 / 6)  # C(2,2) / C(4,2)
    assert summary.pass_hat_k(3) == 0.0
    assert summary.pass_hat_k(2) == pass_hat_k(list(summary.success_by_task.values()), 2)


def test_seeds_depend_on_the_run_seed_and_the_episode_only(tmp_path):
    seen = {}

    def record_seed(messages, episode):
        seen[(episode.task_id, episode.trial)] = episode.seed
        return "Goodbye!"

    collect(DOMAIN, record_seed, task_ids=IDS[:2], trials=2, workers=2, seed=7, out_path=tmp_path / "s.jsonl")
    assert seen == {(t, k): episode_seed(7, t, k) for t in IDS[:2] for k in range(2)}
    assert len(set(seen.values())) == 4 and episode_seed(8, IDS[0], 0) != seen[(IDS[0], 0)]
    assert [r["seed"] for r in _lines(tmp_path / "s.jsonl")] == [seen[(t, k)] for t in IDS[:2] for k in range(2)]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"trials": 0}, ValueError, "trials must be at least 1"),
    ({"workers": 0}, ValueError, "workers must be at least 1"),
    ({"task_ids": ["nope"]}, KeyError, "no tasks \\['nope'\\]"),
    ({"task_ids": [IDS[0], IDS[0]]}, ValueError, "duplicate task ids"),
])
def test_bad_arguments_are_rejected_before_any_episode(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        collect(DOMAIN, lambda m: "hi", out_path=tmp_path / "x.jsonl", **kwargs)
    assert not (tmp_path / "x.jsonl").exists()


def test_an_environment_failure_stops_the_run_and_writes_nothing(tmp_path):
    broken = DOMAIN.tasks[3].model_copy(deep=True)
    broken.evaluation_criteria.actions[0].arguments = {"order_id": "000000"}
    domain = replace(DOMAIN, tasks=[*DOMAIN.tasks[:3], broken, *DOMAIN.tasks[4:]])
    with pytest.raises(ValueError, match=rf"task {broken.id}: reference action 0 .* fails"):
        collect(domain, ReferencePolicy(domain), task_ids=IDS[:8], workers=4, out_path=tmp_path / "e.jsonl")
    assert not (tmp_path / "e.jsonl").exists()
