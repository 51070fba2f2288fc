"""Hub-ready folders: timm loads an encoder folder by "local-dir:", the model card comes from the
result files, and the upload helper checks the folder and sends it whole (offline: a recording API)."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from asit import hub, models
from asit.audio import NormStats


@pytest.fixture()
def encoder_dir(tmp_path):
    torch.manual_seed(0)
    encoder = models.create_encoder("tiny", 64, depth=2, drop_path_rate=0.0).eval()
    directory = models.save_encoder(encoder, tmp_path / "encoder", {"preset": "cpu", "epoch": 8}, stats=NormStats(-6.2, 3.7))
    return directory, encoder


def test_timm_loads_an_encoder_folder_by_local_dir(encoder_dir):
    directory, encoder = encoder_dir
    config = json.loads((directory / "config.json").read_text())
    assert config["architecture"] == "asit_vit_tiny_patch16" and config["num_classes"] == 0
    assert config["pretrained_cfg"]["input_size"] == [1, 64, 128] and config["model_args"]["depth"] == 2
    loaded = timm.create_model(f"local-dir:{directory}", pretrained=True, num_classes=0).eval()
    x = torch.randn(2, 1, 64, 128)
    torch.testing.assert_close(loaded(x), encoder(x))
    # Another input length: timm builds for it and our filter resizes the positional embedding.
    longer = timm.create_model(f"local-dir:{directory}", pretrained=True, num_classes=0, img_size=(128, 128))
    assert longer.pos_embed.shape == (1, 1 + 8 * 8, 192)
    # A classifier can be put on top, as for any timm backbone.
    assert timm.create_model(f"local-dir:{directory}", pretrained=True, num_classes=7)(x).shape == (2, 7)


def test_an_old_encoder_folder_is_upgraded_in_place(encoder_dir):
    directory, encoder = encoder_dir
    config = json.loads((directory / "config.json").read_text())
    old = {k: v for k, v in config.items() if k not in ("pretrained_cfg", "model_args", "num_features")}
    (directory / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="pretrained_cfg"):
        hub.check_loads(directory)
    assert hub.upgrade_folder(directory) and not hub.upgrade_folder(directory)
    again = json.loads((directory / "config.json").read_text())
    assert again["preset"] == "cpu" and again["epoch"] == 8 and again["norm_stats"] == {"mean": -6.2, "std": 3.7}
    x = torch.randn(1, 1, 64, 128)
    torch.testing.assert_close(hub.check_loads(directory).eval()(x), encoder(x))


def _write_results(root, preset="cpu"):
    (root / "pretrain" / preset).mkdir(parents=True)
    summary = {"epochs": 8, "steps": 360, "train_time_s": 161.9, "device": "cpu", "final_loss": 5.84,
               "knn_dataset": "esc50", "knn_accuracy": 31.25, "knn_accuracy_random_init": 27.5}
    (root / "pretrain" / preset / "summary.json").write_text(json.dumps(summary))
    (root / "esc50").mkdir()
    record = {"task": "esc50", "dataset": "builtin", "preset": preset, "metrics": {"accuracy": 61.5}, "baseline_metrics": {"accuracy": 55.25}}
    (root / "esc50" / f"builtin__{preset}.json").write_text(json.dumps(record))
    other = dict(record, preset="smoke", metrics={"accuracy": 12.0})
    (root / "esc50" / "builtin__smoke.json").write_text(json.dumps(other))


def test_the_model_card_is_made_from_the_result_files(encoder_dir, tmp_path):
    directory, _ = encoder_dir
    _write_results(tmp_path / "results")
    card = hub.write_model_card(directory, tmp_path / "results").read_text()
    assert card.startswith("---\nlibrary_name: timm\n")
    assert "asit_vit_tiny_patch16" in card and "`cpu` preset" in card and "epoch 8" in card
    assert "31.2 %" in card and "27.5 %" in card  # the k-NN accuracies of the summary
    assert "| esc50 | builtin | accuracy | 61.5 | 55.2 | 95.3 |" in card  # ours, random init, the paper's
    assert "12.0" not in card  # another preset's result is not this model's
    assert "@article{atito2022asit" in card


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls, contacts nothing."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message):
        from pathlib import Path

        self.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return f"local://{repo_id}/commit/1"


def test_push_checks_the_folder_and_uploads_it_whole(encoder_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory, _ = encoder_dir
    api = RecordingApi()
    with pytest.raises(FileNotFoundError, match="model card"):
        hub.push(directory, "someone/asit-tiny", api=api)
    hub.write_model_card(directory, tmp_path / "no-results")
    assert hub.push(directory, "someone/asit-tiny", api=api) == "local://someone/asit-tiny/commit/1"
    assert api.calls == [
        ("create_repo", "someone/asit-tiny", False, True),
        ("upload_folder", "someone/asit-tiny", ["README.md", "config.json", "model.safetensors"]),
    ]
    (directory / "model.safetensors").write_bytes(b"not weights")
    refused = RecordingApi()
    with pytest.raises(Exception):  # whatever safetensors says about the file, nothing is sent
        hub.push(directory, "someone/asit-tiny", api=refused)
    assert refused.calls == []
