import dataclasses
import os

import pytest
import torch

import asit
from asit import checkpoint as ckpt


@dataclasses.dataclass
class Cfg:
    model_size: str = "tiny"
    num_frames: int = 64
    epochs: int = 2
    nested: dict = dataclasses.field(default_factory=lambda: {"ratio": 0.5})


def state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "epoch": int(value), "rng": torch.get_rng_state()}


def test_save_and_load_carry_config_and_version(tmp_path):
    path = ckpt.save_checkpoint(state(1.0), tmp_path, config=Cfg(), epoch=1)
    assert path == tmp_path / "checkpoint.pth"
    assert (tmp_path / "checkpoint-0001.pth").is_file()
    loaded = ckpt.load_checkpoint(path, expected_config=Cfg())
    assert loaded["asit_version"] == asit.__version__
    assert loaded["torch_version"] == torch.__version__
    assert loaded["config"]["num_frames"] == 64
    assert torch.equal(loaded["model"]["w"], torch.ones(3))
    # plain tensors and Python values only: the safe loader reads it
    torch.load(path, weights_only=True)


def test_keep_last_n(tmp_path):
    for epoch in range(1, 6):
        ckpt.save_checkpoint(state(float(epoch)), tmp_path, config=Cfg(), epoch=epoch, keep_last=2)
    assert [e for e, _ in ckpt.numbered_checkpoints(tmp_path)] == [4, 5]
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint.pth"
    assert ckpt.load_checkpoint(ckpt.find_latest(tmp_path))["epoch"] == 5
    # a mid-epoch save refreshes checkpoint.pth only
    ckpt.save_checkpoint(state(9.0), tmp_path, config=Cfg(), keep_last=2)
    assert [e for e, _ in ckpt.numbered_checkpoints(tmp_path)] == [4, 5]
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 9


def test_find_latest_falls_back_to_numbered(tmp_path):
    assert ckpt.find_latest(tmp_path) is None
    ckpt.save_checkpoint(state(3.0), tmp_path, epoch=3)
    (tmp_path / "checkpoint.pth").unlink()
    (tmp_path / ".checkpoint.pth.tmp-dead").write_bytes(b"half a file")  # a killed writer's leftover
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint-0003.pth"


def test_interrupted_write_leaves_old_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    ckpt.save_checkpoint(state(1.0), tmp_path, config=Cfg(), epoch=1)
    before = sorted(os.listdir(tmp_path))
    real_save = torch.save

    def crash_mid_write(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial bytes")  # some bytes reach the disk, then the process dies
        handle.flush()
        raise KeyboardInterrupt("simulated crash during torch.save")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(state(2.0), tmp_path, config=Cfg(), epoch=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file, no checkpoint-0002
    loaded = ckpt.load_checkpoint(tmp_path / "checkpoint.pth", expected_config=Cfg())
    assert loaded["epoch"] == 1


def test_config_mismatch_names_each_field(tmp_path):
    path = ckpt.save_checkpoint(state(1.0), tmp_path, config=Cfg(), epoch=1)
    with pytest.raises(ckpt.CheckpointMismatch) as info:
        ckpt.load_checkpoint(path, expected_config=Cfg(model_size="base", num_frames=592, nested={"ratio": 0.7}))
    message = str(info.value)
    assert "model_size" in message and "'tiny'" in message and "'base'" in message
    assert "num_frames" in message and "nested.ratio" in message
    assert set(info.value.fields) == {"model_size", "num_frames", "nested.ratio"}
    # fields allowed to change on resume do not count
    ckpt.load_checkpoint(path, expected_config=Cfg(epochs=50), may_change=["epochs"])
    with pytest.raises(ckpt.CheckpointMismatch, match="epochs"):
        ckpt.load_checkpoint(path, expected_config=Cfg(epochs=50))


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "checkpoint.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="checkpoint.pth"):
        ckpt.load_checkpoint(bad)


def test_a_truncated_checkpoint_falls_back_to_the_intact_numbered_one(tmp_path):
    ckpt.save_checkpoint(state(2.0), tmp_path, config=Cfg(), epoch=2)
    ckpt.save_checkpoint(state(3.0), tmp_path, config=Cfg(), epoch=3)
    latest = tmp_path / "checkpoint.pth"
    latest.write_bytes(latest.read_bytes()[:200])  # cut short after the last save
    with pytest.raises(ckpt.UnreadableCheckpoint, match="checkpoint-0003.pth beside it may be intact"):
        ckpt.load_checkpoint(latest)
    with pytest.warns(UserWarning, match=f"cannot read checkpoint {latest}.*Resuming from .*checkpoint-0003.pth \\(epoch 3\\)"):
        path, loaded = ckpt.load_latest_checkpoint(tmp_path, expected_config=Cfg())
    assert path == tmp_path / "checkpoint-0003.pth" and loaded["epoch"] == 3
    for _, numbered in ckpt.numbered_checkpoints(tmp_path):
        numbered.write_bytes(b"")
    with pytest.raises(ckpt.UnreadableCheckpoint, match="no checkpoint in it can be read.*checkpoint.pth.*0003.*0002"):
        ckpt.load_latest_checkpoint(tmp_path)
    assert ckpt.load_latest_checkpoint(tmp_path / "empty") is None


def test_a_dead_writers_temporary_is_removed_by_the_next_save(tmp_path):
    dead = tmp_path / ".checkpoint.pth.tmp-dead"  # a killed writer's leftover (no process id)
    dead.write_bytes(b"half a file")
    dead_numbered = tmp_path / ".checkpoint-0007.pth.tmp-999999999-xyz"  # no such process
    dead_numbered.write_bytes(b"half a file")
    alive = tmp_path / f".checkpoint.pth.tmp-{os.getppid()}-abc"  # a running process's: left alone
    alive.write_bytes(b"being written")
    ckpt.save_checkpoint(state(1.0), tmp_path, config=Cfg(), epoch=1)
    assert not dead.exists() and not dead_numbered.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "checkpoint.pth", "checkpoint-0001.pth"])


def test_a_checkpoint_from_before_a_field_existed_resumes_when_the_field_is_at_its_default(tmp_path):
    """A field added to the config class later is absent from older checkpoints: that run did what
    the default does, so resuming at the default is allowed and any other value is refused."""
    from asit.config import get_preset

    cfg = get_preset("smoke")
    written = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "view_eq_db"}  # an older run's config
    path = ckpt.save_checkpoint({"model": {}}, tmp_path, config=written, epoch=0)
    assert ckpt.load_checkpoint(path, cfg)["config"] == written
    with pytest.raises(ckpt.CheckpointMismatch, match="view_eq_db: checkpoint has 0.0, this run has 6.0"):
        ckpt.load_checkpoint(path, get_preset("smoke", view_eq_db=6.0))
    nested = dict(written, masking={k: v for k, v in written["masking"].items() if k != "noise_std"})
    path = ckpt.save_checkpoint({"model": {}}, tmp_path / "nested", config=nested, epoch=0)
    ckpt.load_checkpoint(path, cfg)  # a nested field at its class default, too
    # the smoke preset's swap_prob (0.0) is not the class default (0.5): missing, it reads as 0.5
    nested = dict(written, masking={k: v for k, v in written["masking"].items() if k != "swap_prob"})
    path = ckpt.save_checkpoint({"model": {}}, tmp_path / "swap", config=nested, epoch=0)
    with pytest.raises(ckpt.CheckpointMismatch, match="masking.swap_prob: checkpoint has 0.5"):
        ckpt.load_checkpoint(path, cfg)
    assert ckpt.config_mismatches({}, {"a": 1}) == {"a": ("<missing>", 1)}  # no defaults: still a mismatch
