"""python -m asit.export: encoder and classifier folders to ONNX with the fbank front end inside,
run in onnxruntime on CPU beside PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from asit import models
from asit.audio import NormStats
from asit.export import DEFAULT_TOLERANCE, OnnxModel, load_waveform_model, main, max_abs_difference

pytestmark = pytest.mark.slow  # each export traces the model with torch.export (about 20 s here)


@pytest.fixture(scope="module")
def encoder_onnx(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("export")
    directory = models.save_encoder(models.create_encoder("tiny", 64, depth=2), root / "encoder", stats=NormStats(-6.0, 4.0))
    out = root / "encoder.onnx"
    assert main([str(directory), "--out", str(out)]) == 0
    return directory, out


def test_the_encoder_export_matches_pytorch(encoder_onnx, capsys):
    directory, out = encoder_onnx
    model, _ = load_waveform_model(directory)
    diff = max_abs_difference(model, out)
    print(f"encoder: onnxruntime vs PyTorch max abs diff {diff:.3g}")
    assert diff < DEFAULT_TOLERANCE
    runtime = OnnxModel(out)
    assert (runtime.kind, runtime.sample_rate, runtime.num_frames) == ("encoder", 16000, 64)
    assert json.loads(runtime.metadata["stats"]) == {"mean": -6.0, "std": 4.0}
    # A batch larger than the front end's CPU chunk of 8, with clips of several lengths.
    audio = 0.2 * torch.randn(11, runtime.num_samples)
    lengths = torch.randint(400, runtime.num_samples + 1, (11,))
    with torch.no_grad():
        expected = model(audio, lengths).numpy()
    got = runtime.run(audio.numpy(), lengths.numpy())
    assert got.shape == (11, 1 + 4 * 8, 192)
    np.testing.assert_allclose(got, expected, atol=DEFAULT_TOLERANCE, rtol=0)


def test_the_runtime_refuses_windows_of_the_wrong_length(encoder_onnx, tmp_path):
    _, out = encoder_onnx
    with pytest.raises(ValueError, match="audio windows of shape"):
        OnnxModel(out).run(np.zeros((1, 100), np.float32), np.array([100]))
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        OnnxModel(tmp_path / "missing.onnx")


def test_a_folder_without_normalisation_statistics_is_refused(tmp_path):
    directory = models.save_encoder(models.create_encoder("tiny", 64, depth=1), tmp_path / "encoder")
    with pytest.raises(ValueError, match="norm_stats"):
        load_waveform_model(directory)
