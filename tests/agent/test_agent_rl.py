"""Multi-turn RL: the tokens PPO trains on are exactly the tokens the policy sampled, tool results and user turns
are masked out of the loss, and an update of the agent RL stage runs end to end on the tiny model."""
import json

import pytest
import torch

from environments.acme_shop import load_domain
from environments.lockstep import collect_batched
from flywheel.agent_policy import TokenPolicy, model_sampler, streams_of
from models.config import PPOConfig
from models.episodes import episode_batch
from models.policy import ActorCritic, load_base
from models.ppo import logprobs_from_logits

TASKS = 3
TEMPERATURE = 1.0


class PatientUser:
    """A user simulator that never ends the conversation, so every episode runs to max_steps with a user turn
    between the policy's turns (the context the loss must skip)."""

    def start(self, task):
        return task.user_scenario.instructions.reason_for_call or "Hello, I need help."

    def respond(self, agent_message):
        return "Sorry, can you say that again? My order is 412345."


@pytest.fixture(scope="module")
def domain():
    return load_domain()


@pytest.fixture(scope="module")
def base(tmp_path_factory, domain):
    """A random tiny Llama whose tokenizer knows the domain's words (sampling needs logits, not skill)."""
    from models.tiny import build_tiny_model

    corpus = [domain.system_prompt(), *(t.user_scenario.instructions.reason_for_call or "" for t in domain.tasks),
              "Sorry, can you say that again? My order is 412345."]
    return build_tiny_model(tmp_path_factory.mktemp("agent") / "base", corpus, vocab_size=512, hidden_size=32,
                            num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=4096, seed=0)


def _collect(ac, tokenizer, domain, path, max_new_tokens=12):
    sample = model_sampler(ac.lm, tokenizer, max_new_tokens=max_new_tokens, temperature=TEMPERATURE,
                           role=lambda: ac.role("policy"))
    task_ids = [t.id for t in domain.tasks[:TASKS]]
    collect_batched(domain, TokenPolicy(tokenizer, sample), task_ids, trials=2, out_path=path, max_steps=3,
                    user_factory=PatientUser)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_tokens_are_the_sampled_tokens_and_only_they_carry_loss(tmp_path, base, domain):
    lm, tokenizer = load_base(base, device="cpu")
    ac = ActorCritic(lm, r=4, alpha=8, with_value=False)
    records = _collect(ac, tokenizer, domain, tmp_path / "episodes.jsonl")
    assert len(records) == 2 * TASKS and all(len(r["turns"]) == 3 for r in records)  # multi-turn, user in between
    streams = streams_of(records)
    input_ids, attention_mask, mask = episode_batch(streams, tokenizer.pad_token_id)
    R = mask.shape[1]
    for row, record in enumerate(records):
        sampled = [t for turn in record["turns"] for t in turn["token_ids"]]
        assert input_ids[row, -R:][mask[row] > 0].tolist() == sampled  # trained = sampled, token for token
        first = record["turns"][0]["context_ids"]
        opening = tokenizer.apply_chat_template(record["messages"][:2], tokenize=False, add_generation_prompt=True)
        assert first == tokenizer(opening, add_special_tokens=False)["input_ids"]
        later = record["turns"][1]["context_ids"]
        assert "can you say that again" in tokenizer.decode(later)  # the user turn is context...
        assert mask[row].sum() == len(sampled) < attention_mask[row].sum()  # ...and carries no loss
    with torch.no_grad(), ac.role("policy"):  # the log-probs training recomputes are the sampling-time ones
        logits = ac.response_logits(input_ids, attention_mask, R)
    recomputed = logprobs_from_logits(logits, input_ids[:, -R:], TEMPERATURE)  # (B, R)
    for row, record in enumerate(records):
        at_sampling = [x for turn in record["turns"] for x in turn["logprobs"]]
        assert recomputed[row][mask[row] > 0].tolist() == pytest.approx(at_sampling, abs=1e-4)


def test_agent_rl_updates_the_policy_on_episodes(tmp_path, base, domain):
    from tasks.agent_train import train_agent_rl

    config = PPOConfig(steps=2, batch_size=2, samples_per_prompt=2, max_new_tokens=12, temperature=TEMPERATURE,
                       learning_rate=1e-2, lora_r=4, lora_alpha=8)
    result = train_agent_rl(config, base, domain, [t.id for t in domain.tasks[:4]], tmp_path / "rl", max_steps=2)
    assert len(result.history) == 2
    assert all({"agent/success_rate", "objective/kl", "losses/policy_loss"} <= set(m) for m in result.history)
    updates = sorted((tmp_path / "rl" / "rollouts").glob("update-*.jsonl"))
    tasks = [sorted({json.loads(line)["task_id"] for line in u.read_text().splitlines()}) for u in updates]
    assert [len(t) for t in tasks] == [2, 2] and tasks[0] != tasks[1]  # each pass over the tasks visits each once
    assert all(len(u.read_text().splitlines()) == 4 for u in updates)  # 2 tasks x 2 episodes
    assert (tmp_path / "rl" / "adapter" / "adapter_config.json").is_file()


def test_update_tasks_visit_every_task_once_per_pass():
    from tasks.agent_train import update_tasks

    ids = [f"t{i}" for i in range(7)]
    first_pass = [t for step in range(3) for t in update_tasks(ids, 2, step, seed=1)][:7]
    assert sorted(first_pass[:6]) == sorted(set(first_pass[:6]))
    everything = update_tasks(ids, 10, 0, seed=1)  # a batch larger than the task set takes each task once
    assert everything == update_tasks(ids, 10, 0, seed=1) and sorted(everything) == sorted(ids)


# A Qwen/Hermes-style template that renders the `tools` it is handed after the system message, as real models' do.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools>"
    "<|im_end|>\n{% endif %}{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] or '' }}{% for tc in m.get('tool_calls') or [] %}<tool_call>{{ tc['function'] | tojson }}"
    "</tool_call>{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}")


def test_a_template_that_takes_tools_gets_the_domain_schemas_and_stays_token_exact(tmp_path, base, domain):
    from flywheel.agent_policy import template_tools

    model, tokenizer = load_base(base, device="cpu")
    schemas = domain.schemas()
    assert template_tools(tokenizer, schemas) is None  # the tiny template takes no tools
    tokenizer.chat_template = TOOLS_TEMPLATE
    tools = template_tools(tokenizer, schemas)
    assert [t["function"]["name"] for t in tools] == [s["function"]["name"] for s in schemas]

    sample = model_sampler(model, tokenizer, max_new_tokens=8, temperature=TEMPERATURE)
    path = tmp_path / "episodes.jsonl"
    collect_batched(domain, TokenPolicy(tokenizer, sample, tools), [domain.tasks[0].id], trials=2, out_path=path,
                    max_steps=3, user_factory=PatientUser)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2
    for stream in streams_of(records):
        first = tokenizer.decode(stream[0][0])
        assert "<tools>" in first and all(f'"name": "{s["function"]["name"]}"' in first for s in schemas)
        assert len(stream) == 3 and all(ids for _, ids in stream)  # three sampled turns, none re-tokenised
        assert domain.policy.strip() in first  # the system message, without its own tool list
        rendered = tokenizer.decode([t for context, ids in stream for t in context + ids])
        assert rendered.count("<tools>") == 1  # once (the template's), and later turns append only new messages
