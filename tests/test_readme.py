"""README.md and flywheel.example.yaml must stay true: the config reference is generated from the models."""
import re
from pathlib import Path

from flywheel.config import load_config, render_reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_current():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- config-reference:start -->\n(.*)<!-- config-reference:end -->", text, re.S)
    assert m, "README.md lacks the config-reference markers"
    assert m.group(1).strip() == render_reference().strip(), (
        "README.md's configuration reference is stale: run `python -m flywheel.config` to regenerate it"
    )


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_example_config_is_valid():
    cfg = load_config(ROOT / "flywheel.example.yaml")
    assert cfg.project.name
