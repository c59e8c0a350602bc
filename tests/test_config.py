import pytest
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.config import ConfigError, load_config, render_config


def test_defaults_are_a_valid_config():
    cfg = load_config()
    assert cfg.source.uri
    assert cfg.project.name


def test_unknown_key_names_its_path(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("source:\n  urii: x\n")
    with pytest.raises(ConfigError, match=r"source\.urii: unknown key"):
        load_config(f)


def test_bad_value_names_its_path(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("source:\n  max_workers: -3\n")
    with pytest.raises(ConfigError, match=r"source\.max_workers"):
        load_config(f)


def test_env_expansion_and_secret_masking(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-very-secret")
    f = tmp_path / "c.yaml"
    f.write_text("rewards:\n  judge:\n    api_key: ${JUDGE_KEY}\n")
    cfg = load_config(f)
    assert cfg.rewards.judge.api_key.get_secret_value() == "sk-very-secret"
    shown = render_config(cfg)
    assert "sk-very-secret" not in shown and "**********" in shown


def test_missing_env_var_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    f = tmp_path / "c.yaml"
    f.write_text("source:\n  uri: ${NOPE_NOT_SET}\n")
    with pytest.raises(ConfigError, match=r"source\.uri: environment variable \$\{NOPE_NOT_SET\} is not set"):
        load_config(f)


def test_overrides_apply_dotted_keys():
    cfg = load_config(None, {"source.uri": "s3://bucket-x/logs"})
    assert cfg.source.uri == "s3://bucket-x/logs"


def test_cli_config_check_and_show(tmp_path, monkeypatch):
    monkeypatch.setenv("K", "hidden-value")
    good = tmp_path / "good.yaml"
    good.write_text("rewards:\n  judge:\n    api_key: ${K}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("project:\n  nme: x\n")
    runner = CliRunner()
    assert runner.invoke(app, ["config", "check", str(good)]).exit_code == 0
    res = runner.invoke(app, ["config", "check", str(bad)])
    assert res.exit_code == 1 and "project.nme: unknown key" in res.output
    res = runner.invoke(app, ["config", "show", str(good)])
    assert res.exit_code == 0 and "hidden-value" not in res.output
