"""Embeddings of raw audio of any length from a pretrained encoder: one per 160 ms, and one per clip.

The evaluation suites (:mod:`asit.hear`, :mod:`asit.xares`) hand over waveforms, not
spectrograms, and clips longer or shorter than the encoder's input. :class:`ClipEmbedder` does
what fine-tuning's evaluation does with them:

    wave -> remove each clip's mean -> Kaldi fbank (10 ms hop) -> normalise with the encoder's stats
         -> pad to whole patch rows -> windows of the encoder's input length, 50 % overlap
         -> encoder tokens per window

and pools the tokens in two ways:

- **per time step**: the patch grid's time axis has one row per 16 frames = **160 ms**; a row's
  tokens are averaged over the frequency patches (the 8 mel bands), and over every window that
  covers the row (windows overlap by half, so most rows are seen twice). Row ``r`` covers frames
  ``16 r ... 16 r + 15``, whose windows span ``160 r`` to ``160 r + 175`` ms: its timestamp is
  the centre, ``160 r + 87.5`` ms.
- **per clip**: the class token, averaged over the clip's windows (what the fine-tuning head reads).

Frames past the end of a clip are padding: a zero log-mel before normalisation, as in training.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from asit.audio import DEFAULT_SAMPLE_RATE, FRAME_LENGTH_MS, FRAME_SHIFT_MS, NormStats, frames_for_samples, window_length
from asit.features import FbankFrontend, padding_value
from asit.models import load_encoder
from asit.session import repo_root


def find_default_encoder(results_dir: str | Path | None = None) -> Path:
    """The encoder of the largest preset that ``make reproduce`` has pretrained under ``results/pretrain``."""
    root = Path(results_dir or repo_root() / "results") / "pretrain"
    for preset in ("paper", "gpu", "cpu", "smoke"):
        candidate = root / preset / "encoder"
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise FileNotFoundError(f"no pretrained encoder under {root}/<preset>/encoder: run `make reproduce` or pass the encoder's folder")


class ClipEmbedder(nn.Module):
    """An encoder and its front end: waveforms ``(B, S)`` at ``sample_rate`` -> token embeddings.

    Args:
        encoder: a timm ViT of this package (``dynamic_img_size``); run in eval mode.
        stats: the normalisation statistics it was trained with.
        window: frames per encoder input (``None``: the encoder's own input length); a multiple
            of the patch size.
        batch_size: windows per encoder call.
    """

    def __init__(self, encoder: nn.Module, stats: NormStats, sample_rate: int = DEFAULT_SAMPLE_RATE, window: int | None = None, batch_size: int = 32):
        super().__init__()
        self.encoder = encoder.eval()
        self.sample_rate = int(sample_rate)
        self.frontend = FbankFrontend(None, stats, self.sample_rate, int(encoder.patch_embed.img_size[1]))
        self.pad_value = padding_value(stats)
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.window = int(window or encoder.patch_embed.img_size[0])
        if self.window % self.patch:
            raise ValueError(f"the window ({self.window} frames) must be a multiple of the patch size {self.patch}")
        self.embedding_size = int(encoder.embed_dim)
        self.batch_size = batch_size

    @classmethod
    def from_folder(cls, directory: str | Path, **kwargs) -> "ClipEmbedder":
        """An encoder folder written by :func:`asit.models.save_encoder` (stats and rate from its config)."""
        encoder = load_encoder(directory, drop_path_rate=0.0)
        config = encoder.asit_config
        stats = config.get("norm_stats")
        if not stats:
            raise ValueError(f"{directory}/config.json has no norm_stats: the encoder's input normalisation is unknown")
        sample_rate = (config.get("fbank") or {}).get("sample_rate", DEFAULT_SAMPLE_RATE)
        return cls(encoder, NormStats(float(stats["mean"]), float(stats["std"])), sample_rate, **kwargs)

    @property
    def hop_ms(self) -> float:
        """Time between two timestamp embeddings: one patch row, 160 ms."""
        return self.patch * FRAME_SHIFT_MS

    def timestamps(self, rows: int) -> torch.Tensor:
        """``(rows,)`` centre of each patch row in milliseconds."""
        return torch.arange(rows, dtype=torch.float32) * self.hop_ms + ((self.patch - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) / 2

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` waveforms -> ``(B, 1, T, F)`` normalised fbank, padded to a whole number of patch rows."""
        if audio.dim() != 2:
            raise ValueError(f"expected audio of shape (clips, samples), got {tuple(audio.shape)}")
        if audio.shape[1] < window_length(self.sample_rate):
            raise ValueError(f"clips of {audio.shape[1]} samples are shorter than one {FRAME_LENGTH_MS:.0f} ms fbank window")
        audio = audio.float()
        spec = self.frontend(audio - audio.mean(dim=1, keepdim=True))
        pad = -spec.shape[2] % self.patch
        return torch.nn.functional.pad(spec, (0, 0, 0, pad), value=self.pad_value)

    def _window_starts(self, rows: int) -> list[int]:
        """First patch row of each window: every half window, the last one reaching the clip's last row."""
        per_window = self.window // self.patch
        step = max(1, per_window // 2)
        last = max(0, rows - per_window)
        return list(range(0, last, step)) + [last]

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` audio -> ``(B, R, D)`` per-160-ms embeddings and ``(B, D)`` clip embeddings, float32."""
        spec = self.spectrogram(audio)  # (B, 1, T, F), T = 16 R
        batch, rows = spec.shape[0], spec.shape[2] // self.patch
        per_window = self.window // self.patch
        if rows < per_window:  # a short clip: one window, padded as in training
            spec = torch.nn.functional.pad(spec, (0, 0, 0, (per_window - rows) * self.patch), value=self.pad_value)
        starts = self._window_starts(max(rows, per_window))
        windows = torch.cat([spec[:, :, s * self.patch : (s + per_window) * self.patch] for s in starts])  # (W*B, 1, window, F)
        tokens = torch.cat([self.encoder.forward_features(chunk) for chunk in windows.split(self.batch_size)]).float()
        prefix = getattr(self.encoder, "num_prefix_tokens", 1)
        dim = tokens.shape[-1]
        patches = tokens[:, prefix:].reshape(len(starts), batch, per_window, -1, dim).mean(3)  # (W, B, rows per window, D)
        total = tokens.new_zeros(batch, max(rows, per_window), dim)
        count = tokens.new_zeros(1, max(rows, per_window), 1)
        for i, start in enumerate(starts):
            total[:, start : start + per_window] += patches[i]
            count[:, start : start + per_window] += 1
        frame_emb = (total / count)[:, :rows]
        clip_emb = tokens[:, 0].reshape(len(starts), batch, dim).mean(0)
        return frame_emb, clip_emb

    def rows_for_samples(self, num_samples: int) -> int:
        """How many timestamp embeddings a clip of ``num_samples`` gets."""
        return math.ceil(frames_for_samples(num_samples, self.sample_rate) / self.patch)
