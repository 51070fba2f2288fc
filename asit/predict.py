"""Label any audio file with a fine-tuned classifier.

    python -m asit.predict dog.wav street.flac --checkpoint results/esc50/builtin__cpu/classifier-fold1
    python -m asit.predict clip.wav --checkpoint results/ks2/official__paper/classifier --top-k 3

The checkpoint is a classifier written by :mod:`asit.finetune` (a folder with
``model.safetensors`` + ``config.json``, or that safetensors file), or its ONNX export
(``python -m asit.export``, run in onnxruntime on CPU); a pretrained encoder alone has no classes
and is refused with a message saying so.

Any file of any length and sample rate: it is read as mono, resampled to the model's rate and its
mean removed (the reference front end, :mod:`asit.audio`). A clip shorter than the model's input
is zero-padded (the padded frames are zero, exactly as in training). A longer one is cut into
windows of the model's input length with 50 % overlap, the last window ending at the clip's end,
and the class scores (softmax, or sigmoid for a multi-label model) are **averaged over the
windows**: a label heard anywhere in a long recording is diluted by the windows without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from asit.audio import AudioError, NormStats, display_path, hop_length, load_audio, prepare_wave, samples_for_frames, window_starts
from asit.classifier import load_classifier
from asit.export import OnnxModel
from asit.features import FbankFrontend


class Predictor:
    """A loaded classifier and its front end; call :meth:`scores` or :meth:`top_k` per file."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu", batch_size: int = 16):
        self.device = torch.device(device)
        self.onnx = None
        if str(checkpoint).endswith(".onnx"):  # an export of python -m asit.export: front end inside, onnxruntime on CPU
            self.onnx = OnnxModel(checkpoint)
            if self.onnx.kind != "classifier":
                raise ValueError(f"{checkpoint} is an exported encoder: it has no classes; export a fine-tuned classifier")
            self.config = self.onnx.config
        else:
            self.model, self.config = load_classifier(checkpoint, self.device)
        self.classes: list[str] = list(self.config["classes"])
        self.multilabel: bool = bool(self.config["multilabel"])
        self.sample_rate: int = int(self.config["sample_rate"])
        self.num_frames: int = int(self.config["num_frames"])
        stats = NormStats(float(self.config["stats"]["mean"]), float(self.config["stats"]["std"]))
        self.frontend = FbankFrontend(self.num_frames, stats, self.sample_rate, int(self.config["num_mel_bins"])).to(self.device)
        self.batch_size = batch_size

    @property
    def window(self) -> int:
        """Samples in one model input."""
        return samples_for_frames(self.num_frames, self.sample_rate)

    def windows(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, S)`` windows of a mean-removed clip and their valid lengths ``(W,)``."""
        size = self.window
        if wave.numel() <= size:
            padded = torch.nn.functional.pad(wave, (0, size - wave.numel()))
            return padded[None], torch.tensor([wave.numel()])
        starts = window_starts(wave.numel(), size, hop_length(self.sample_rate))
        return torch.stack([wave[s : s + size] for s in starts]), torch.full((len(starts),), size)

    @torch.no_grad()
    def scores(self, path: str | Path) -> torch.Tensor:
        """``(C,)`` class scores of one file, averaged over its windows. Raises ``AudioError``."""
        wave = prepare_wave(load_audio(path, self.sample_rate, max_seconds=None))
        waves, lengths = self.windows(wave)
        total = torch.zeros(len(self.classes))
        for start in range(0, len(waves), self.batch_size):
            batch = waves[start : start + self.batch_size].to(self.device)
            logits = self.logits(batch, lengths[start : start + self.batch_size].to(self.device))
            probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
            total += probs.sum(dim=0).cpu()
        return total / len(waves)

    def logits(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(W, C)`` logits of windows ``(W, S)`` with valid lengths ``(W,)``, in PyTorch or onnxruntime."""
        if self.onnx is not None:
            return torch.from_numpy(self.onnx.run(waves.cpu().numpy(), lengths.cpu().numpy())).float()
        return self.model(self.frontend(waves, lengths)).float()  # frontend: (W, 1, T, F)

    def top_k(self, path: str | Path, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` best ``(label, score)`` pairs of one file, best first."""
        scores = self.scores(path)
        values, indices = scores.topk(min(k, len(self.classes)))
        return [(self.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def predict(
    files: Sequence[str | Path] | str | Path,
    checkpoint: str | Path,
    top_k: int = 5,
    device: str | torch.device = "cpu",
) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(label, score)`` pairs per file, best first (see the module docstring).

    Raises :class:`asit.audio.AudioError` for a file that cannot be read as audio.
    """
    if isinstance(files, (str, Path)):
        files = [files]
    predictor = Predictor(checkpoint, device)
    return [predictor.top_k(f, top_k) for f in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asit.predict",
        description="Label audio files with a classifier fine-tuned by asit.finetune. Long files are "
        "scored in windows of the model's input length, and the scores averaged.",
    )
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, ogg; any rate, any length)")
    parser.add_argument("--checkpoint", required=True, help="a classifier folder written by asit.finetune (model.safetensors + config.json), or its .onnx export")
    parser.add_argument("--top-k", type=int, default=5, help="labels to print per file")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    predictor = Predictor(args.checkpoint, args.device)
    failed = 0
    for path in args.files:
        try:
            best = predictor.top_k(path, args.top_k)
        except AudioError as err:  # named, and the other files are still labelled
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(display_path(path))  # a non-UTF-8 name printed with escapes, not a UnicodeEncodeError
        for label, score in best:
            print(f"  {score:6.3f}  {label}")
    if failed:
        print(f"{failed} of {len(args.files)} file(s) could not be labelled", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Predictor", "predict", "window_starts"]
