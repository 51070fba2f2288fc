"""ONNX export of an encoder or a classifier, fbank front end included, checked with onnxruntime.

    python -m asit.export results/pretrain/cpu/encoder --out encoder.onnx
    python -m asit.export results/esc50/builtin__cpu/classifier-fold1 --out esc50.onnx

The ONNX graph takes **waveforms**, not spectrograms: the Kaldi filterbank of
:mod:`asit.features` (framing, pre-emphasis, Hann window, FFT, mel filters, log, normalisation)
is part of it, so a deployment needs no PyTorch and no audio library beyond reading the file.

Inputs (any batch size):

- ``audio`` ``(B, S)`` float32: windows of ``S = samples_for_frames(num_frames)`` samples at
  ``sample_rate``, cut from a clip **whose mean was removed** (the whole clip's mean, as
  :mod:`asit.predict` does; a clip shorter than a window is zero-padded);
- ``lengths`` ``(B,)`` int64: the valid samples of each window (frames past them are zeroed, as
  in training).

Outputs: an encoder gives ``tokens`` ``(B, 1 + N, D)`` (class token first, after the final norm);
a classifier gives ``logits`` ``(B, C)``. The ONNX file's metadata (``metadata_props``) holds the
front-end settings and, for a classifier, the classes, so :class:`OnnxModel` needs nothing else.

After writing, the export runs the graph in onnxruntime on CPU beside PyTorch on the same random
audio and prints the largest absolute difference; above ``--tolerance`` it fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from asit.audio import NormStats
from asit.features import FbankFrontend
from asit.classifier import load_classifier
from asit.models import load_encoder

DEFAULT_TOLERANCE = 1e-3  # float32 FFT and attention in another runtime: differences of ~1e-5 are usual
OPSET = 18


class WaveformModel(nn.Module):
    """Front end + network: ``(audio (B, S), lengths (B,))`` -> tokens or logits."""

    def __init__(self, network: nn.Module, frontend: FbankFrontend, kind: str):
        super().__init__()
        if kind not in ("encoder", "classifier"):
            raise ValueError(f"kind must be 'encoder' or 'classifier', got {kind!r}")
        self.network = network.eval()
        self.frontend = frontend
        self.kind = kind

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        spec = self.frontend(audio, lengths)  # (B, 1, T, F)
        if self.kind == "encoder":
            return self.network.forward_features(spec)  # (B, 1 + N, D)
        return self.network(spec)  # (B, C)


def _config(directory: Path) -> dict[str, Any]:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {directory} is not an encoder or classifier folder written by asit")
    return json.loads(config_file.read_text())


def load_waveform_model(path: str | Path) -> tuple[WaveformModel, dict[str, str]]:
    """The folder's network behind its front end, and the metadata to store in the ONNX file."""
    directory = Path(path)
    directory = directory if directory.is_dir() else directory.parent
    config = _config(directory)
    if "format" in config:  # a classifier written by fine-tuning
        network, config = load_classifier(directory)
        stats = NormStats(float(config["stats"]["mean"]), float(config["stats"]["std"]))
        rate, frames, mels = int(config["sample_rate"]), int(config["num_frames"]), int(config["num_mel_bins"])
        meta = {"kind": "classifier", "classes": json.dumps(list(config["classes"])), "multilabel": json.dumps(bool(config["multilabel"]))}
    else:
        network = load_encoder(directory, drop_path_rate=0.0)
        stats_dict = config.get("norm_stats")
        if not stats_dict:
            raise ValueError(f"{directory}/config.json has no norm_stats: the front end cannot normalise")
        stats = NormStats(float(stats_dict["mean"]), float(stats_dict["std"]))
        rate, frames, mels = int(config["fbank"]["sample_rate"]), int(config["img_size"][0]), int(config["img_size"][1])
        meta = {"kind": "encoder"}
    frontend = FbankFrontend(frames, stats, rate, mels)
    meta.update(sample_rate=str(rate), num_frames=str(frames), num_mel_bins=str(mels), num_samples=str(frontend.num_samples),
                stats=json.dumps({"mean": stats.mean, "std": stats.std}), source=str(directory))
    return WaveformModel(network, frontend, meta["kind"]), meta


def export_onnx(model: WaveformModel, out: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as ONNX (dynamic batch) with ``metadata`` in its ``metadata_props``."""
    import onnx  # optional (the `export` extra): imported where it is used

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = model.frontend.num_samples
    example = (torch.zeros(2, samples), torch.full((2,), samples, dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1)
    output = "tokens" if model.kind == "encoder" else "logits"
    with warnings.catch_warnings():  # both inputs share the batch axis; torch.onnx says so in a warning
        warnings.filterwarnings("ignore", message=".*axis name: batch will not be used.*")
        program = torch.onnx.export(
            model.eval(), example, dynamo=True, opset_version=OPSET, input_names=["audio", "lengths"], output_names=[output],
            dynamic_shapes=({0: batch}, {0: batch}), verbose=False,
        )
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(proto, str(out))
    onnx.checker.check_model(str(out))
    return out


class OnnxModel:
    """An exported file in onnxruntime (CPU): ``run(audio, lengths)`` -> tokens or logits, as numpy."""

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        import onnxruntime  # optional (the `export` extra): imported where it is used

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        self.session = onnxruntime.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if "num_samples" not in self.metadata:
            raise ValueError(f"{self.path} has no asit metadata (num_samples, sample_rate, ...): export it with python -m asit.export")
        self.kind = self.metadata["kind"]
        self.sample_rate = int(self.metadata["sample_rate"])
        self.num_frames = int(self.metadata["num_frames"])
        self.num_samples = int(self.metadata["num_samples"])
        self.classes: list[str] = json.loads(self.metadata.get("classes", "[]"))
        self.multilabel: bool = json.loads(self.metadata.get("multilabel", "false"))

    @property
    def config(self) -> dict[str, Any]:
        """The front-end settings and classes, under the names of a classifier's ``config.json``."""
        return {
            "classes": self.classes, "multilabel": self.multilabel, "sample_rate": self.sample_rate, "num_frames": self.num_frames,
            "num_mel_bins": int(self.metadata["num_mel_bins"]), "stats": json.loads(self.metadata["stats"]),
        }

    def run(self, audio: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 2 or audio.shape[1] != self.num_samples:
            raise ValueError(f"{self.path} takes audio windows of shape (batch, {self.num_samples}), got {audio.shape}")
        return self.session.run(None, {"audio": audio, "lengths": np.asarray(lengths, dtype=np.int64)})[0]


def max_abs_difference(model: WaveformModel, onnx_file: str | Path, batch: int = 3, seed: int = 0) -> float:
    """Largest ``|onnxruntime - PyTorch|`` on random audio, one window cut short to exercise ``lengths``."""
    generator = torch.Generator().manual_seed(seed)
    samples = model.frontend.num_samples
    audio = 0.3 * torch.randn(batch, samples, generator=generator)
    lengths = torch.full((batch,), samples, dtype=torch.int64)
    lengths[-1] = samples // 3
    audio[-1, samples // 3 :] = 0.0  # a short clip's window: zero-padded past its end
    with torch.no_grad():
        expected = model(audio, lengths).numpy()
    got = OnnxModel(onnx_file).run(audio.numpy(), lengths.numpy())
    return float(np.abs(got - expected).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asit.export", description="Export an encoder or classifier folder to ONNX (fbank front end included) and check it with onnxruntime.")
    parser.add_argument("model", help="an encoder folder (asit.models.save_encoder) or a classifier folder (asit.finetune)")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="largest allowed |onnxruntime - PyTorch|")
    args = parser.parse_args(argv)
    model, metadata = load_waveform_model(args.model)
    out = export_onnx(model, args.out, metadata)
    diff = max_abs_difference(model, out)
    print(f"wrote {out} ({metadata['kind']}, {out.stat().st_size / 1e6:.1f} MB); onnxruntime vs PyTorch max abs diff {diff:.3g}")
    if not diff <= args.tolerance:
        print(f"error: the difference is above the tolerance {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["WaveformModel", "load_waveform_model", "export_onnx", "OnnxModel", "max_abs_difference"]
