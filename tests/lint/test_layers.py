"""The layer contracts hold on this tree, and they break when a lower layer imports Prefect or a stage."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flywheel", "flows", "tasks", "models", "data_contracts", "demo", "environments")
LINT = Path(sys.executable).with_name("lint-imports")


def copy_tree(dst: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", dst / ".importlinter")
    return dst


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return copy_tree(tmp_path_factory.mktemp("layers"))


def test_the_layers_hold(tree):
    result = lint(tree)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("path, line, contract", [
    ("models/ppo.py", "import prefect", "models is torch/transformers/peft only"),
    ("flywheel/records.py", "import prefect", "the flywheel library never imports Prefect"),
    ("flywheel/stats.py", "from tasks import train", "the flywheel library never imports Prefect"),
    ("tasks/evaluate.py", "from tasks.train import train_candidate", "a stage never imports another stage"),
    ("data_contracts/interaction_log_v1.py", "import flywheel.config", "data_contracts is Great Expectations only"),
    ("flows/continuous_improvement.py", "import mlflow", "flows compose stages"),
])
def test_an_import_across_a_layer_breaks_lint(tree, path, line, contract):
    target = tree / path
    original = target.read_text()
    try:
        target.write_text(original + f"\n{line}  # injected by the test\n")
        result = lint(tree)
    finally:
        target.write_text(original)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout, result.stdout[-3000:]
