"""The HEAR 2021 common API for an ASiT encoder, so ``hear-eval-kit`` can evaluate it.

    import asit.hear as hear
    model = hear.load_model("results/pretrain/cpu/encoder")    # an encoder folder (or its model.safetensors)
    scene = hear.get_scene_embeddings(audio, model)            # (n_sounds, D)
    frames, timestamps = hear.get_timestamp_embeddings(audio, model)  # (n_sounds, n_steps, D), (n_sounds, n_steps)

``audio`` is ``(n_sounds, n_samples)`` float32 at ``model.sample_rate`` (16 kHz), values in
[-1, 1], clips of any length (all the same length within one call, as the API has it). The
embeddings are computed by :class:`asit.embeddings.ClipEmbedder`: the clip is windowed at the
encoder's input length with 50 % overlap, as fine-tuning's evaluation does.

- **Timestamp embeddings**: one per **160 ms** (a patch row of the encoder's grid; the 8
  frequency patches averaged), timestamps in **milliseconds** at each row's centre
  (``160 r + 87.5``). HEAR's validator suggests 50 ms or less for music transcription; the patch
  grid does not go finer without changing the encoder, so onset tasks are scored at 160 ms.
- **Scene embeddings**: the class token, averaged over the clip's windows.

Sizes: ``model.scene_embedding_size == model.timestamp_embedding_size == encoder width``.

``load_model()`` with no path takes the largest preset's encoder that ``make reproduce``
pretrained (``results/pretrain/<preset>/encoder``). The module name to give HEAR's tools is
``asit.hear``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asit.embeddings import ClipEmbedder, find_default_encoder

__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings"]


class HearModel(ClipEmbedder):
    """A :class:`ClipEmbedder` with the attributes HEAR reads."""

    @property
    def scene_embedding_size(self) -> int:
        return self.embedding_size

    @property
    def timestamp_embedding_size(self) -> int:
        return self.embedding_size


def load_model(model_file_path: str = "") -> HearModel:
    """An encoder folder written by :func:`asit.models.save_encoder`, or its ``model.safetensors``."""
    path = Path(model_file_path) if model_file_path else find_default_encoder()
    directory = path if path.is_dir() else path.parent
    return HearModel.from_folder(directory)


def _device_of(model: HearModel) -> torch.device:
    return next(model.encoder.parameters()).device


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n_sounds, n_steps, D)`` float32 embeddings and ``(n_sounds, n_steps)`` timestamps in ms."""
    frames, _ = model(audio.to(_device_of(model)))
    stamps = model.timestamps(frames.shape[1]).to(frames.device).expand(frames.shape[0], -1)
    return frames, stamps


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """``(n_sounds, D)`` float32: one embedding per clip."""
    _, clips = model(audio.to(_device_of(model)))
    return clips
