"""Training faults on checkpoints (issue #13): a corrupted or partial checkpoint is detected through the manifest
written last and the previous one is used; a disk full while writing leaves the last good one; rewriting a step
never leaves the run without a loadable checkpoint. In-process with the real ``models.checkpoint`` (world 1, rank 0);
no training run."""
import errno
import json
import logging
import shutil

import pytest
import torch

from models import checkpoint
from models.checkpoint import MANIFEST, load_latest, save_checkpoint


def fake_state(step: int) -> dict:
    gen = torch.Generator().manual_seed(step)
    policy = {"lora_A": torch.randn(8, 4, generator=gen), "lora_B": torch.randn(4, 8, generator=gen)}
    return {"step": step, "policy": policy, "optimizer": {"exp_avg": torch.randn(32, generator=gen)},
            "history": [{"loss": float(i)} for i in range(step)]}


@pytest.fixture
def ckpt_dir(tmp_path):
    """Steps 1..3 saved with keep=3."""
    path = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(path, step, fake_state(step), rank=0, world=1, keep=3)
    return path


def loaded_step(ckpt_dir) -> int:
    found = load_latest(ckpt_dir, rank=0)
    assert found is not None
    state, rng = found
    assert set(rng) == {"torch", "python", "numpy"}
    want = fake_state(state["step"])
    assert torch.equal(state["policy"]["lora_A"], want["policy"]["lora_A"])
    assert state["history"] == want["history"]
    return state["step"]


def test_intact_checkpoints_load_the_newest_and_list_every_file(ckpt_dir):
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000001", "step-000002", "step-000003"]
    manifest = json.loads((ckpt_dir / "step-000003" / MANIFEST).read_text())
    assert set(manifest["files"]) == {"state.pt", "rng-rank0.pt"}
    assert loaded_step(ckpt_dir) == 3


def test_corrupted_state_bytes_fall_back_to_the_previous_checkpoint(ckpt_dir, caplog):
    state_pt = ckpt_dir / "step-000003" / "state.pt"
    data = bytearray(state_pt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    state_pt.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        assert loaded_step(ckpt_dir) == 2
    assert "step-000003" in caplog.text and "sha256" in caplog.text


def test_truncated_rank_file_falls_back(ckpt_dir, caplog):
    rng_pt = ckpt_dir / "step-000003" / "rng-rank0.pt"
    rng_pt.write_bytes(rng_pt.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        assert loaded_step(ckpt_dir) == 2
    assert "rng-rank0.pt has 100 bytes" in caplog.text


@pytest.mark.parametrize("removed", [MANIFEST, "rng-rank0.pt", "state.pt"])
def test_a_missing_file_falls_back_to_the_previous_checkpoint(ckpt_dir, caplog, removed):
    (ckpt_dir / "step-000003" / removed).unlink()
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        assert loaded_step(ckpt_dir) == 2
    assert "step-000003" in caplog.text and ("missing" in caplog.text)


def test_an_unreadable_manifest_falls_back(ckpt_dir, caplog):
    (ckpt_dir / "step-000003" / MANIFEST).write_text('{"files": ')
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        assert loaded_step(ckpt_dir) == 2
    assert "unreadable manifest" in caplog.text


def test_every_checkpoint_bad_gives_none(ckpt_dir):
    for folder in ckpt_dir.iterdir():
        (folder / "state.pt").write_bytes(b"garbage")
    assert load_latest(ckpt_dir, rank=0) is None


def test_disk_full_while_saving_leaves_the_last_good_checkpoint(ckpt_dir, monkeypatch):
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a partial file on disk, then the error
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match="step-000004") as err:
        save_checkpoint(ckpt_dir, 4, fake_state(4), rank=0, world=1, keep=3)
    assert err.value.errno == errno.ENOSPC and "No space left" in str(err.value)
    monkeypatch.undo()
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000001", "step-000002", "step-000003"]  # no .tmp
    assert loaded_step(ckpt_dir) == 3


def test_rewriting_the_same_step_keeps_a_loadable_checkpoint(ckpt_dir):
    new = fake_state(3) | {"history": [{"loss": -1.0}]}
    save_checkpoint(ckpt_dir, 3, new, rank=0, world=1, keep=3)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000001", "step-000002", "step-000003"]  # no .old
    state, _ = load_latest(ckpt_dir, rank=0)
    assert state["history"] == [{"loss": -1.0}]


def test_a_kill_between_the_two_renames_keeps_the_old_folder_in_use(ckpt_dir):
    """The state a kill leaves after ``step-3`` moved aside to ``.old`` and before the new folder took its name."""
    (ckpt_dir / "step-000003").rename(ckpt_dir / "step-000003.old")
    assert loaded_step(ckpt_dir) == 3
    save_checkpoint(ckpt_dir, 3, fake_state(3), rank=0, world=1, keep=3)  # the rerun writes step 3 again
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000001", "step-000002", "step-000003"]
    assert loaded_step(ckpt_dir) == 3


def test_keep_prunes_only_after_the_new_checkpoint_is_in_place(ckpt_dir):
    save_checkpoint(ckpt_dir, 4, fake_state(4), rank=0, world=1, keep=3)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000002", "step-000003", "step-000004"]
    assert loaded_step(ckpt_dir) == 4


def test_folders_of_an_older_version_without_manifest_load_when_torch_can(tmp_path, caplog):
    ckpt_dir = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(ckpt_dir, step, fake_state(step), rank=0, world=1, keep=3)
        (ckpt_dir / f"step-{step:06d}" / MANIFEST).unlink()
    assert loaded_step(ckpt_dir) == 2
    (ckpt_dir / "step-000002" / "state.pt").write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        assert loaded_step(ckpt_dir) == 1
    assert "step-000002" in caplog.text and "unreadable" in caplog.text
    shutil.rmtree(ckpt_dir / "step-000002")
    save_checkpoint(ckpt_dir, 2, fake_state(2), rank=0, world=1, keep=3)  # the new version resumes and saves
    assert loaded_step(ckpt_dir) == 2
