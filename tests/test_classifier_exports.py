"""Classifier folders are hub-ready and deployable: timm loads them by "local-dir:" and computes
what the fine-tuned classifier computes; their ONNX export (front end inside) matches PyTorch and
asit.predict labels files from it as it does from the folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from asit import models
from asit.audio import NormStats
from asit.classifier import AudioClassifier, load_classifier, save_classifier
from asit.export import DEFAULT_TOLERANCE, load_waveform_model, main as export_main, max_abs_difference
from asit.predict import Predictor, predict
from asit.tasks import get_task
from layouts import write_wav

CLASSES = ["dog", "rain", "siren"]
TASK = get_task("esc50", "smoke")  # the classifier's input length is its task's


def _classifier(pool: str, seed: int = 0) -> AudioClassifier:
    torch.manual_seed(seed)
    model = AudioClassifier(models.create_encoder("tiny", TASK.num_frames, depth=2, drop_path_rate=0.0), len(CLASSES), pool=pool)
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a head that is not near zero, so the checks see it
    return model.eval()


def _save(model: AudioClassifier, directory):
    return save_classifier(model, directory, classes=CLASSES, task=TASK, stats=NormStats(-6.0, 4.0), multilabel=False)


@pytest.mark.parametrize("pool", ["token", "mean"])
def test_timm_loads_a_classifier_folder_and_computes_the_same_logits(tmp_path, pool):
    model = _classifier(pool)
    directory = _save(model, tmp_path / "classifier")
    config = json.loads((directory / "config.json").read_text())
    assert config["format"] == "asit-classifier" and config["label_names"] == CLASSES and config["num_classes"] == 3
    spec = torch.randn(2, 1, TASK.num_frames, 128)
    twin = timm.create_model(f"local-dir:{directory}", pretrained=True).eval()
    torch.testing.assert_close(twin(spec), model(spec))
    again, _ = load_classifier(directory)
    torch.testing.assert_close(again(spec), model(spec))


def test_a_classifier_saved_in_the_earlier_layout_still_loads(tmp_path):
    model = _classifier("token")
    directory = _save(model, tmp_path / "classifier")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))  # encoder.* keys
    spec = torch.randn(1, 1, TASK.num_frames, 128)
    torch.testing.assert_close(load_classifier(directory)[0](spec), model(spec))


@pytest.mark.slow
def test_the_classifier_exports_to_onnx_and_predict_runs_from_it(tmp_path, capsys):
    directory = _save(_classifier("mean", seed=1), tmp_path / "classifier")
    out = tmp_path / "classifier.onnx"
    assert export_main([str(directory), "--out", str(out)]) == 0
    model, _ = load_waveform_model(directory)
    diff = max_abs_difference(model, out)
    print(f"classifier: onnxruntime vs PyTorch max abs diff {diff:.3g}")
    assert diff < DEFAULT_TOLERANCE
    files = [write_wav(tmp_path / "short.wav", 0.3, 8000, freq=300), write_wav(tmp_path / "long.wav", 3.0, 44100, freq=500)]
    from_folder, from_onnx = Predictor(directory), Predictor(out)
    assert from_onnx.classes == CLASSES and from_onnx.num_frames == from_folder.num_frames
    for path in files:
        np.testing.assert_allclose(from_onnx.scores(path).numpy(), from_folder.scores(path).numpy(), atol=1e-4)
    assert [label for label, _ in predict(files[1], out, top_k=3)[0]] == [label for label, _ in predict(files[1], directory, top_k=3)[0]]
