"""ASiT's two heads on top of the ViT encoder.

- :class:`ProjectionHead`: the DINO head (Caron et al., "Emerging Properties in Self-Supervised
  Vision Transformers", arXiv 2104.14294) shared by both distillation losses: one MLP and
  bottleneck, then one weight-normalised output layer for the class token (global) and one for
  the patch tokens (local). ``(B, 1+N, D) -> (global (B, Cg), local (B, N, Cl))``.
- :class:`ReconstructionHead`: per-token MLP and a transposed convolution back to fbank pixels,
  for group masked model learning (GMML). ``(B, N, D), grid -> (B, 1, T, F)``.

Submodule names are ours (``global_layer``, ``local_layer``, ``conv_transpose``); the released
code's names (``cls_layer``, ``data_layer``, ``convTrans``) are mapped by
:func:`asit.models.load_released_checkpoint`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from timm.layers import trunc_normal_

__all__ = ["ProjectionHead", "ReconstructionHead"]


def _init_linear(m: nn.Module) -> None:
    # DINO / timm ViT init for the MLP layers.
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _normalised_layer(in_dim: int, out_dim: int) -> nn.Linear:
    """Bias-free linear layer, weight-normalised with the gain frozen at 1 (DINO's last layer).

    Only the direction ``parametrizations.weight.original1`` (the old ``weight_v``) trains; the norm
    ``original0`` (``weight_g``) stays 1, so each output is a cosine similarity with a prototype.
    """
    layer = weight_norm(nn.Linear(in_dim, out_dim, bias=False))
    layer.parametrizations.weight.original0.data.fill_(1.0)
    layer.parametrizations.weight.original0.requires_grad = False
    return layer


class ProjectionHead(nn.Module):
    """MLP in -> hidden -> GELU -> hidden -> GELU -> bottleneck, L2-normalised, then two outputs.

    Args:
        in_dim: encoder width ``D``.
        hidden_dim, bottleneck_dim: 2048 and 256 as in DINO and ASiT.
        global_dim: class-token output size (8192 in ASiT).
        local_dim: patch-token output size (1024 in the earlier revision, 8192 in the later).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, global_dim: int = 8192, local_dim: int = 1024):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.mlp.apply(_init_linear)
        self.global_layer = _normalised_layer(bottleneck_dim, global_dim)
        self.local_layer = _normalised_layer(bottleneck_dim, local_dim)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The trainable output-layer weights, for DINO's "freeze the last layer for the first epoch"."""
        return [p for layer in (self.global_layer, self.local_layer) for p in layer.parameters() if p.requires_grad]

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` ``(B, 1+N, D)`` (class token first) -> ``(B, global_dim)``, ``(B, N, local_dim)``."""
        z = self.mlp(tokens)  # (B, 1+N, bottleneck)
        z = nn.functional.normalize(z, dim=-1, p=2)
        return self.global_layer(z[:, 0]), self.local_layer(z[:, 1:])


class ReconstructionHead(nn.Module):
    """Patch tokens back to spectrogram pixels.

    MLP ``D -> hidden -> hidden -> 128`` with a GELU after each layer (as released), then a
    transposed convolution with kernel = stride = patch size, so every token paints its own
    16 x 16 patch.

    Args:
        in_dim: encoder width ``D``.
        patch_size: ViT patch size.
        in_chans: spectrogram channels (1).
        hidden_dim: MLP width: 768 whatever the encoder, as released (so a released ViT-S
            checkpoint's head loads); ``0`` or ``None``: ``in_dim``, a head in proportion to a
            ViT-S / ViT-Ti encoder (our option; the same at ViT-B).
        bottleneck_dim: channels into the transposed convolution (128 as released).
    """

    def __init__(self, in_dim: int, patch_size: int = 16, in_chans: int = 1, hidden_dim: int | None = 768, bottleneck_dim: int = 128):
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.patch_size = patch_size
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
            nn.GELU(),
        )
        self.mlp.apply(_init_linear)
        self.conv_transpose = nn.ConvTranspose2d(bottleneck_dim, in_chans, kernel_size=patch_size, stride=patch_size)

    def forward(self, patch_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``patch_tokens`` ``(B, N, D)`` in row-major (time, frequency) order, ``grid = (gT, gF)``
        with ``gT * gF == N`` -> ``(B, in_chans, gT * p, gF * p)``."""
        B, N, _ = patch_tokens.shape
        if grid[0] * grid[1] != N:
            raise ValueError(f"grid {tuple(grid)} does not match {N} patch tokens")
        z = self.mlp(patch_tokens)  # (B, N, C)
        z = z.transpose(1, 2).reshape(B, -1, grid[0], grid[1])  # (B, C, gT, gF)
        return self.conv_transpose(z)  # (B, in_chans, T, F)
