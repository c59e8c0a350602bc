"""Config values cannot make the pipeline write outside its state dir (issue #13, security; fast, no night).

The config has no free path field under the state dir: every file there has a fixed name (``quarantine/``,
``snapshots/``, ``reports/``, ``locks/``, ...) except those named after a config *value*:

* ``project.name`` / ``registry.model_name``: ``<state>/locks/registry-<name>.lock`` (``flywheel/registry.py``),
  ``<state>/models/registry/<name>-v<N>`` (the fetched champion), MLflow's model and experiment names;
* ``validate.pii.extra_patterns`` names: the replacement ``[NAME]`` written inside JSON-encoded columns;
* the night (``--day``): ``<state>/locks/night-<day>.lock`` and every run name.

Each is refused at load time with an error naming the key when it could climb out (``..``, ``/``, ``\\``, an absolute
path, a control character, a leading dot). Paths the user points *outside* the state dir on purpose
(``project.state_dir``, ``source.uri``, ``gateway.capture.sink`` / ``wal_dir``, ``evaluate.golden_set``,
``agent.transcripts``, ``rewards.calibration.labels_path``, a rubric path) are the user's choice and not restricted.
Object keys with ``..`` or absolute paths are the bad-input corpus's (``test_bad_input.py``: ``key_with_dotdot``,
``absolute_key``, ``backslash_key``, ``symlink_outside_source``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flywheel.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]
ESCAPES = {
    "dotdot_climb": "../../outside",
    "dotdot_alone": "..",
    "dot_alone": ".",
    "absolute": "/etc/cron.d/flywheel",
    "slash_inside": "team/support-bot",
    "windows_climb": "..\\..\\outside",
    "hidden": ".support-bot",
    "nul_byte": "support\x00bot",
    "newline": "support\nbot",
    "padded": " support-bot",
    "empty": "",
}
NAME_FIELDS = {"project.name": ("project", "name"), "registry.model_name": ("registry", "model_name")}
GOOD_NAMES = ["support-bot", "it_helpdesk", "Acme Bot 2.0", "sql-agent"]


def _raw(field: tuple[str, str], value: str) -> dict:
    return {field[0]: {field[1]: value}}


@pytest.mark.parametrize("kind", list(ESCAPES))
@pytest.mark.parametrize("key", list(NAME_FIELDS))
def test_a_name_that_would_leave_its_folder_is_refused_naming_the_key(key, kind):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_raw(NAME_FIELDS[key], ESCAPES[kind]), "flywheel.yaml")
    message = str(err.value)
    assert message.startswith("flywheel.yaml: invalid configuration")
    assert f"\n  {key}: " in message, message
    assert ("plain name" in message) or ("non-empty name" in message), message


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_plain_names_load_and_their_files_stay_in_the_state_dir(name, tmp_path):
    """Accepted names: the registry lock the real code takes, and the fetched-champion folder, are inside <state>."""
    from flywheel.registry import Registry, registry_lock

    state = tmp_path / "state"
    cfg = config_from_dict({"project": {"name": name, "state_dir": str(state)}, "registry": {"model_name": name}})
    registry = Registry.from_config(cfg)
    with registry_lock(registry.state_dir, registry.model_name, timeout_s=5):
        pass
    made = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert made and all(p.resolve().is_relative_to(state.resolve()) for p in made), made
    assert (state / "models" / "registry" / f"{name}-v1").resolve().parent == (state / "models" / "registry").resolve()


def test_a_yaml_file_and_an_override_are_checked_the_same_way(tmp_path):
    bad = tmp_path / "flywheel.yaml"
    bad.write_text("project:\n  name: ../../escaped\n")
    with pytest.raises(ConfigError, match=r"project\.name: .*plain name"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"registry\.model_name: .*plain name"):
        load_config(None, overrides={"registry.model_name": "/abs/path"})


def test_the_cli_refuses_an_escaping_name_before_any_stage_runs(tmp_path):
    from flywheel.cli import app

    state = tmp_path / "state"
    bad = tmp_path / "flywheel.yaml"
    bad.write_text(f"project:\n  name: ../../escaped\n  state_dir: {state}\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad), "--day", "2026-11-20"])
    assert result.exit_code == 1
    assert "project.name" in result.output
    assert not state.exists() and not (tmp_path.parent / "escaped").exists()


def test_the_shipped_configs_still_load():
    """flywheel.example.yaml and every demo task's config keep plain names."""
    from demo import TASKS, get_task
    from demo.run import FAST, demo_config

    load_config(REPO / "flywheel.example.yaml")
    for name in TASKS:
        config_from_dict(demo_config(Path("/tmp/x"), get_task(name), FAST, seed=0), name)


@pytest.mark.parametrize("name", ['a"b', "a\\b", "../x", "x y", "", "1st"])
def test_pii_pattern_names_that_could_break_the_json_columns_are_refused(name):
    from flywheel import pii

    with pytest.raises(ConfigError, match=r"validate\.pii\.extra_patterns\."):
        config_from_dict({"validate": {"pii": {"extra_patterns": {name: r"ORD-\d+"}}}})
    with pytest.raises(pii.PiiPatternError, match=r"validate\.pii\.extra_patterns\."):
        pii.patterns({name: r"ORD-\d+"})


def test_a_valid_pii_pattern_name_keeps_the_messages_column_json():
    import pyarrow as pa

    from flywheel import pii

    cfg = config_from_dict({"validate": {"pii": {"extra_patterns": {"order_ref": r"ORD-\d{4}"}}}})
    messages = json.dumps([{"role": "user", "content": "ORD-1234, mail a@b.example, ip 10.0.0.1, +1 415 555 0100"}])
    table, counts = pii.scrub(pa.table({"messages": [messages]}), cfg.validation.pii.extra_patterns)
    scrubbed = json.loads(table["messages"][0].as_py())
    assert scrubbed[0]["content"] == "[ORDER_REF], mail [EMAIL], ip [IP], [PHONE]"
    assert counts["order_ref"] == counts["email"] == counts["ip"] == counts["phone"] == 1


@pytest.mark.parametrize("day", ["../../etc", "2026-11-20/../../x", "/tmp/night", "2026-11-20\x00", "20261120x"])
def test_a_night_that_is_not_a_date_is_refused(day):
    """``--day`` becomes ``<state>/locks/night-<day>.lock`` and run names: only YYYY-MM-DD passes."""
    from flows.continuous_improvement import StageFailed, night_of

    with pytest.raises(StageFailed, match=r"day: expected YYYY-MM-DD"):
        night_of(day, "UTC")
