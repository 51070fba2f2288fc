"""An ASiT encoder as the audio encoder X-ARES evaluates (``xares`` on PyPI, 2025).

    from asit.xares import ASiTEncoder
    encoder = ASiTEncoder("results/pretrain/cpu/encoder")
    encoder(torch.randn(2, 50_000)).shape   # (2, T', D): one D-vector per 160 ms

X-ARES asks for an ``nn.Module`` whose class name ends in ``Encoder``, with ``sampling_rate``,
``output_dim`` and ``hop_size_in_ms``, mapping ``(B, T)`` audio to ``(B, T', D)`` frames; its
tasks pool the frames themselves. The frames are the HEAR timestamp embeddings
(:class:`asit.embeddings.ClipEmbedder`: windows at the encoder's input length, one patch row of
160 ms per frame, frequency patches averaged), so both suites score the same features.

X-ARES's task list has a Speech Commands V1 and a VoxCeleb1 task, but they are **not the
paper's KS1 and SID protocols** (read from xares 0.1.3's task files): its Speech Commands V1
classifies all 30 words, where KS1 is the SUPERB-style 12 classes (10 words + silence +
unknown); its VoxCeleb1 task has the 1,251 speakers but trains an MLP on frozen, pooled frames
of 6 s crops (by default from a mini subset of its training shards), where the paper fine-tunes
the whole encoder. X-ARES also brings its own splits. Its numbers are comparable neither with
the paper's table nor with :mod:`asit.finetune`'s results.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from asit.embeddings import ClipEmbedder, find_default_encoder

__all__ = ["ASiTEncoder"]


class ASiTEncoder(nn.Module):
    """``(B, T)`` waveforms at ``sampling_rate`` -> ``(B, T', output_dim)``, one frame per ``hop_size_in_ms``."""

    def __init__(self, encoder_dir: str | Path | None = None, embedder: ClipEmbedder | None = None):
        super().__init__()
        self.embedder = embedder if embedder is not None else ClipEmbedder.from_folder(encoder_dir or find_default_encoder())
        self.sampling_rate = self.embedder.sample_rate
        self.output_dim = self.embedder.embedding_size
        self.hop_size_in_ms = self.embedder.hop_ms

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() == 1:
            audio = audio[None]
        device = next(self.embedder.encoder.parameters()).device
        frames, _ = self.embedder(audio.to(device))
        return frames
