"""One declaration of the training knobs: the YAML ``train:`` section is PPOConfig's fields, defaults and docs, plus
the pipeline-only keys; the recipes validate; the default learning rate follows its documented rule."""
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from flywheel.config import ConfigError, TrainConfig, config_from_dict, load_config
from flywheel.config.train import TrainPipelineFields
from models.config import RUNTIME_ONLY, PPOConfig, default_learning_rate

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_train_section_has_the_ppo_fields_with_the_same_defaults_types_and_docs():
    ppo = {f.name: f for f in dataclasses.fields(PPOConfig) if f.name not in RUNTIME_ONLY}
    yaml_fields = {k: v for k, v in TrainConfig.model_fields.items() if k not in TrainPipelineFields.model_fields}
    assert list(yaml_fields) == list(ppo)  # same fields, same order
    hints = typing.get_type_hints(PPOConfig)
    for name, f in ppo.items():
        assert yaml_fields[name].get_default(call_default_factory=True) == _default(f), name
        assert yaml_fields[name].annotation == hints[name], name
        assert yaml_fields[name].description == f.metadata["doc"], name
    assert set(TrainPipelineFields.model_fields) == {"max_prompts"}  # the only keys that are not PPO knobs
    assert set(RUNTIME_ONLY) == {"progress"}


def test_every_ppo_knob_has_a_one_line_doc():
    for f in dataclasses.fields(PPOConfig):
        doc = f.metadata.get("doc", "")
        assert doc and "\n" not in doc, f.name


def test_yaml_defaults_build_the_default_ppo_config():
    from tasks.train import ppo_config

    cfg = ppo_config(load_config())
    assert cfg == PPOConfig(progress=False)
    assert (cfg.advantage, cfg.temperature, cfg.samples_per_prompt, cfg.ppo_epochs, cfg.num_minibatches,
            cfg.batch_size, cfg.learning_rate) == ("rloo", 0.7, 4, 1, 1, 16, None)
    assert cfg.fused_first_pass and not cfg.with_value


def test_bounds_and_cross_field_checks_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.steps: Input should be greater than or equal to 1"):
        config_from_dict({"train": {"steps": 0}})
    with pytest.raises(ConfigError, match=r"train\.advantage: Input should be 'gae', 'rloo' or 'grpo'"):
        config_from_dict({"train": {"advantage": "ppo"}})
    with pytest.raises(ConfigError, match=r"train: .*samples_per_prompt >= 2"):
        config_from_dict({"train": {"advantage": "grpo", "samples_per_prompt": 1}})
    with pytest.raises(ConfigError, match=r"model\.lora_r: unknown key"):  # LoRA knobs live in train:
        config_from_dict({"model": {"lora_r": 8}})
    assert config_from_dict({"train": {"advantage": "gae", "samples_per_prompt": 1}}).train.advantage == "gae"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates_against_the_train_section(recipe):
    raw = yaml.safe_load(recipe.read_text())
    assert recipe.read_text().startswith("# Recipe:")  # a header saying what was measured, or that nothing was
    TrainConfig.model_validate(raw["train"])
    cfg = config_from_dict(raw, str(recipe))
    from tasks.train import ppo_config
    ppo_config(cfg)  # and builds the trainer's config


def test_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"tiny-cpu", "qwen-0.5b-1gpu"}


def test_default_learning_rate_rule():
    assert default_learning_rate(192) == pytest.approx(1e-3)  # measured on the tiny demo model
    assert 4e-5 <= default_learning_rate(4096) <= 1e-4  # a 7B
    widths = [64, 192, 896, 1536, 4096, 8192]
    lrs = [default_learning_rate(h) for h in widths]
    assert lrs == sorted(lrs, reverse=True)
    for h, lr in zip(widths, lrs):
        assert lr * h == pytest.approx(0.2, rel=0.05)  # ∝ 1 / width (two significant digits)
    with pytest.raises(ValueError, match="hidden_size"):
        default_learning_rate(0)


def test_ppo_config_checks():
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        PPOConfig(advantage="rloo", samples_per_prompt=1)
    with pytest.raises(ValueError, match="advantage: expected one of gae, rloo, grpo"):
        PPOConfig(advantage="ppo")
    with pytest.raises(ValueError, match="must divide"):
        PPOConfig(batch_size=3, samples_per_prompt=3, num_minibatches=2)
    assert PPOConfig(advantage="gae").with_value and not PPOConfig(advantage="grpo").with_value


def test_config_doctests():
    import doctest

    import models.config

    assert doctest.testmod(models.config).failed == 0
