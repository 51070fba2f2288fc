"""ASiT models: a timm ViT on spectrograms, ASiT's heads around it, and their weights on disk.

Papers and code this follows:
- ASiT: Atito, Awais, Wang, Plumbley, Kittler, "ASiT: Local-Global Audio Spectrogram vIsion
  Transformer for Event Classification", arXiv 2211.13189; code: github.com/Sara-Ahmed/ASiT.
- ViT: Dosovitskiy et al., arXiv 2010.11929; the implementation is timm's ``VisionTransformer``
  (Ross Wightman, github.com/huggingface/pytorch-image-models), used as is.
- AST (Gong et al., arXiv 2104.01778): 1-channel spectrogram patches; ImageNet initialisation by
  summing the RGB patch filters and resizing the positional embedding.

API
---
- timm models ``asit_vit_tiny_patch16`` (192 / 12 / 3), ``asit_vit_small_patch16`` (384 / 12 / 6),
  ``asit_vit_base_patch16`` (768 / 12 / 12), registered on ``import asit``. One input channel,
  16 x 16 patches, input ``(B, 1, T, F)`` (time = height, 128 mel = width), 592 x 128 by default,
  ``dynamic_img_size=True`` so any length runs (the positional embedding is interpolated on the
  fly). ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` loads
  weights saved at any length (:func:`checkpoint_filter_fn` resizes them).
- ``create_encoder(size="base", num_frames=592, num_mel_bins=128, num_classes=0, drop_path_rate=0.1, **kwargs)``
- ``resize_pos_embed(state_dict, new_grid, old_grid=None) -> state_dict``
- ``init_from_imagenet_vit(encoder, imagenet_state_dict) -> (missing, unexpected)``
- ``ASiT(encoder, projection, reconstruction=None)``; ``forward(x, return_reconstruction=True) -> ASiTOutput``
  with ``global_out (B, Cg)``, ``local_out (B, N, Cl)``, ``reconstruction (B, 1, T, F) | None``,
  ``tokens (B, 1+N, D)``.
- ``build_asit(size="base", num_frames=592, global_dim=8192, local_dim=1024, drop_path_rate=0.1,
  with_reconstruction=True, reconstruction_hidden_dim=768, cls_token_std=0.02, ..., **kwargs) -> ASiT``
- ``save_encoder(encoder, directory, extra=None, *, stats=None, sample_rate=16000) -> Path``
- ``load_encoder(path, num_frames=None, num_classes=0, **kwargs) -> VisionTransformer`` (config on
  ``encoder.asit_config``)
- ``load_released_checkpoint(path, which="teacher", num_frames=None) -> {"encoder", "projection", "reconstruction"}``
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
from safetensors.torch import save as save_safetensors
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models import VisionTransformer, build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from asit.atomic import atomic_write
from asit.audio import DEFAULT_SAMPLE_RATE, FRAME_LENGTH_MS, FRAME_SHIFT_MS, NUM_MEL_BINS, NormStats
from asit.heads import ProjectionHead, ReconstructionHead

__all__ = [
    "PRETRAIN_FRAMES",
    "PATCH_SIZE",
    "SIZES",
    "create_encoder",
    "resize_pos_embed",
    "checkpoint_filter_fn",
    "init_from_imagenet_vit",
    "ASiT",
    "ASiTOutput",
    "build_asit",
    "save_encoder",
    "load_encoder",
    "read_encoder_config",
    "nonfinite_tensors",
    "check_finite",
    "load_released_checkpoint",
]

PRETRAIN_FRAMES = 592  # 6 s crops at a 10 ms hop: a 37 x 8 grid of 16 x 16 patches, 296 tokens
PATCH_SIZE = 16
RELEASED_RECONSTRUCTION_WIDTH = 768  # the released RECHead's MLP width, whatever the encoder's
RELEASED_CLS_TOKEN_STD = 0.02  # the released class-token init (truncated normal); timm's is 1e-6
# size -> (embed_dim, depth, num_heads), as in the released vision_transformer.py (+ timm's tiny)
SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


# --------------------------------------------------------------------------------------------
# Positional embeddings


def _grid(num_frames: int, num_mel_bins: int = NUM_MEL_BINS, patch_size: int = PATCH_SIZE) -> tuple[int, int]:
    return num_frames // patch_size, num_mel_bins // patch_size


def resize_pos_embed(
    state_dict: dict[str, torch.Tensor],
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> dict[str, torch.Tensor]:
    """Return a copy of ``state_dict`` whose ``pos_embed`` is resampled to ``new_grid = (gT, gF)``.

    ``old_grid=None`` infers the stored grid from its token count, assuming the frequency grid is
    unchanged (``new_grid[1]``, 128 / 16 = 8): a checkpoint of ``1 + gT * gF`` tokens is
    ``(gT, gF)``. A token count that does not divide raises ``ValueError`` (for a square ImageNet
    grid use :func:`init_from_imagenet_vit`, or pass ``old_grid``). Bicubic, as timm does.
    """
    out = dict(state_dict)
    if "pos_embed" not in out:
        return out
    pos = out["pos_embed"]  # (1, prefix + gT*gF, D)
    tokens = pos.shape[1] - num_prefix_tokens
    if old_grid is None:
        if tokens % new_grid[1]:
            raise ValueError(
                f"cannot infer the grid of a positional embedding with {tokens} patch tokens: it is not a multiple of "
                f"the {new_grid[1]} frequency patches; pass old_grid=(time, freq) (an ImageNet ViT: init_from_imagenet_vit)"
            )
        old_grid = (tokens // new_grid[1], new_grid[1])
    if old_grid[0] * old_grid[1] != tokens:
        raise ValueError(f"old_grid {tuple(old_grid)} does not match the {tokens} patch tokens of pos_embed")
    if tuple(old_grid) != tuple(new_grid):
        out["pos_embed"] = resample_abs_pos_embed(pos, list(new_grid), list(old_grid), num_prefix_tokens=num_prefix_tokens)
    return out


def _encoder_subset(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The encoder's weights alone: drops a DDP ``module.`` prefix, and picks the ``backbone.``
    (released FullPipeline) or ``encoder.`` (our :class:`ASiT`) part of a whole model's state dict."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if "patch_embed.proj.weight" not in state_dict:
        for prefix in ("backbone.", "encoder."):
            if f"{prefix}patch_embed.proj.weight" in state_dict:
                return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def checkpoint_filter_fn(state_dict: dict[str, Any], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Adapt an encoder state dict to ``model`` (timm's ``pretrained_filter_fn`` for our models).

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}``, keeps the encoder part of a whole-model
    state dict (``module.`` / ``backbone.`` / ``encoder.`` prefixes), sums 3-channel patch filters to one channel, resizes the positional
    embedding to the model's grid (old grid inferred, see :func:`resize_pos_embed`), and drops a
    classifier the model does not have or whose shape differs.
    """
    state_dict = state_dict.get("model", state_dict)
    state_dict = state_dict.get("state_dict", state_dict)
    state_dict = _encoder_subset(state_dict)
    w = state_dict.get("patch_embed.proj.weight")
    if w is not None and w.shape[1] != model.patch_embed.proj.weight.shape[1] and model.patch_embed.proj.weight.shape[1] == 1:
        state_dict["patch_embed.proj.weight"] = w.sum(dim=1, keepdim=True)  # (D, 1, p, p): AST's RGB sum
    state_dict = resize_pos_embed(state_dict, model.patch_embed.grid_size, num_prefix_tokens=model.num_prefix_tokens)
    head = model.get_classifier()
    for key in ("head.weight", "head.bias"):
        if key in state_dict and (not isinstance(head, nn.Linear) or state_dict[key].shape != getattr(head, key[5:]).shape):
            del state_dict[key]
    return state_dict


# --------------------------------------------------------------------------------------------
# timm registration


def _cfg(**kwargs) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (1, PRETRAIN_FRAMES, NUM_MEL_BINS),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": (0.0,),  # inputs arrive normalised: (fbank - mean) / (2 * std), see asit.audio
        "std": (1.0,),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2211.13189",
        "paper_name": "ASiT: Local-Global Audio Spectrogram vIsion Transformer for Event Classification",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "asit_vit_tiny_patch16": _cfg(),
        "asit_vit_small_patch16": _cfg(),
        "asit_vit_base_patch16": _cfg(),
    }
)


def _create_asit_vit(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    args = dict(
        img_size=(PRETRAIN_FRAMES, NUM_MEL_BINS),
        patch_size=PATCH_SIZE,
        in_chans=1,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
        dynamic_img_size=True,  # local crops (e.g. 192 frames) and fine-tuning lengths run as they are
    )
    args.update(kwargs)  # timm.layers.LayerNorm: eps 1e-6 by default
    return build_model_with_cfg(VisionTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **args)


@register_model
def asit_vit_tiny_patch16(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Ti/16 on 1-channel spectrograms (192 dim, 12 layers, 3 heads)."""
    return _create_asit_vit("asit_vit_tiny_patch16", pretrained, **dict(dict(embed_dim=192, depth=12, num_heads=3), **kwargs))


@register_model
def asit_vit_small_patch16(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/16 on 1-channel spectrograms (384 dim, 12 layers, 6 heads)."""
    return _create_asit_vit("asit_vit_small_patch16", pretrained, **dict(dict(embed_dim=384, depth=12, num_heads=6), **kwargs))


@register_model
def asit_vit_base_patch16(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-B/16 on 1-channel spectrograms (768 dim, 12 layers, 12 heads): the paper's model."""
    return _create_asit_vit("asit_vit_base_patch16", pretrained, **dict(dict(embed_dim=768, depth=12, num_heads=12), **kwargs))


def create_encoder(
    size: str = "base",
    num_frames: int = PRETRAIN_FRAMES,
    num_mel_bins: int = NUM_MEL_BINS,
    num_classes: int = 0,
    drop_path_rate: float = 0.1,
    **kwargs,
) -> VisionTransformer:
    """The ASiT encoder for ``(B, 1, num_frames, num_mel_bins)`` inputs (timm ``VisionTransformer``).

    ``drop_path_rate`` 0.1 is the student's stochastic depth; ``kwargs`` go to ``timm.create_model``
    (e.g. ``pretrained=True, pretrained_cfg_overlay=dict(file=...)``).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    return timm.create_model(
        f"asit_vit_{size}_patch16",
        img_size=(num_frames, num_mel_bins),
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )


def init_from_imagenet_vit(encoder: VisionTransformer, imagenet_state_dict: dict[str, torch.Tensor]):
    """Initialise ``encoder`` from an ImageNet ViT of the same width (the later revision's option).

    The RGB patch filters are summed to one channel and the square positional embedding is resized
    bicubically to the spectrogram grid; the ImageNet classifier is dropped. Returns the
    ``(missing_keys, unexpected_keys)`` of the load (both empty for a plain timm ViT of that size).
    """
    sd = dict(imagenet_state_dict.get("model", imagenet_state_dict))
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    w = sd["patch_embed.proj.weight"]  # (D, 3, p, p)
    if w.shape[0] != encoder.embed_dim:
        raise ValueError(f"ImageNet ViT width {w.shape[0]} does not match the encoder's {encoder.embed_dim}")
    sd["patch_embed.proj.weight"] = w.sum(dim=1, keepdim=True)  # (D, 1, p, p)
    tokens = sd["pos_embed"].shape[1] - encoder.num_prefix_tokens
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"expected a square ImageNet positional embedding, got {tokens} patch tokens")
    sd = resize_pos_embed(sd, encoder.patch_embed.grid_size, (side, side), encoder.num_prefix_tokens)
    result = encoder.load_state_dict(sd, strict=False)
    return result.missing_keys, result.unexpected_keys


# --------------------------------------------------------------------------------------------
# ASiT: encoder + heads


class ASiTOutput(NamedTuple):
    """What :class:`ASiT` returns for a batch of ``B`` spectrograms with ``N`` patches."""

    global_out: torch.Tensor  # (B, Cg) class token through the projection head
    local_out: torch.Tensor  # (B, N, Cl) patch tokens through the projection head
    reconstruction: torch.Tensor | None  # (B, 1, T, F) or None
    tokens: torch.Tensor  # (B, 1+N, D) encoder output after the final norm


class ASiT(nn.Module):
    """Encoder + projection head (global and local distillation) + reconstruction head (GMML).

    The teacher is a ``copy.deepcopy`` of the student; it is called with
    ``return_reconstruction=False`` (it sees clean views only and its reconstruction head, if any,
    is never used).
    """

    def __init__(self, encoder: VisionTransformer, projection: ProjectionHead, reconstruction: ReconstructionHead | None = None):
        super().__init__()
        self.encoder = encoder
        self.projection = projection
        self.reconstruction = reconstruction

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.encoder.patch_embed.patch_size)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder blocks in the backward pass (less memory, about 30 % slower)."""
        self.encoder.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor, return_reconstruction: bool = True) -> ASiTOutput:
        """``x`` ``(B, 1, T, F)`` with ``T`` and ``F`` multiples of the patch size."""
        ph, pw = self.patch_size
        if x.shape[-2] % ph or x.shape[-1] % pw:
            raise ValueError(f"T and F must be multiples of the patch size {ph} x {pw}, got {tuple(x.shape[-2:])}")
        tokens = self.encoder.forward_features(x)  # (B, 1+N, D)
        global_out, local_out = self.projection(tokens)  # (B, Cg), (B, N, Cl)
        reconstruction = None
        if return_reconstruction and self.reconstruction is not None:
            grid = (x.shape[-2] // ph, x.shape[-1] // pw)
            reconstruction = self.reconstruction(tokens[:, self.encoder.num_prefix_tokens :], grid)  # (B, 1, T, F)
        return ASiTOutput(global_out, local_out, reconstruction, tokens)


def build_asit(
    size: str = "base",
    num_frames: int = PRETRAIN_FRAMES,
    global_dim: int = 8192,
    local_dim: int = 1024,
    drop_path_rate: float = 0.1,
    with_reconstruction: bool = True,
    reconstruction_hidden_dim: int = RELEASED_RECONSTRUCTION_WIDTH,
    cls_token_std: float | None = RELEASED_CLS_TOKEN_STD,
    head_hidden_dim: int = 2048,
    head_bottleneck_dim: int = 256,
    imagenet_weights: str | Path = "",
    **kwargs,
) -> ASiT:
    """A fresh ASiT student: encoder of ``size``, projection head, reconstruction head.

    ``local_dim`` 1024 is the earlier revision, 8192 the later. ``reconstruction_hidden_dim``:
    the reconstruction MLP's width, 768 whatever the encoder as released; 0 = the encoder's
    width (our option: a ViT-S / ViT-Ti head in proportion to its encoder). ``cls_token_std``:
    the class token's truncated-normal init, 0.02 as released; ``None`` keeps timm's (std 1e-6).
    ``imagenet_weights``: a state-dict file of an ImageNet ViT of the same width to start the
    encoder from (the later revision's option, :func:`init_from_imagenet_vit`); "" = random init.
    ``kwargs`` go to :func:`create_encoder`.
    """
    encoder = create_encoder(size, num_frames=num_frames, drop_path_rate=drop_path_rate, **kwargs)
    if cls_token_std is not None:
        trunc_normal_(encoder.cls_token, std=cls_token_std)
    if imagenet_weights:
        missing, _ = init_from_imagenet_vit(encoder, torch.load(imagenet_weights, map_location="cpu", weights_only=True))
        if missing:
            raise ValueError(f"{imagenet_weights}: the ImageNet ViT lacks {len(missing)} encoder tensors, e.g. {missing[:3]}")
    projection = ProjectionHead(
        encoder.embed_dim, hidden_dim=head_hidden_dim, bottleneck_dim=head_bottleneck_dim, global_dim=global_dim, local_dim=local_dim
    )
    reconstruction = None
    if with_reconstruction:
        reconstruction = ReconstructionHead(
            encoder.embed_dim,
            patch_size=encoder.patch_embed.patch_size[0],
            in_chans=1,
            hidden_dim=reconstruction_hidden_dim or encoder.embed_dim,
        )
    return ASiT(encoder, projection, reconstruction)


# --------------------------------------------------------------------------------------------
# Saving and loading


def _architecture(encoder: VisionTransformer) -> str:
    arch = (getattr(encoder, "pretrained_cfg", None) or {}).get("architecture")
    if arch:
        return arch
    for size, (dim, _, _) in SIZES.items():
        if encoder.embed_dim == dim:
            return f"asit_vit_{size}_patch16"
    raise ValueError(f"no registered ASiT architecture has width {encoder.embed_dim}")


class NonFiniteWeightsError(ValueError):
    """Weights with NaN or infinite values: training diverged; nothing built on them is usable."""


def nonfinite_tensors(source: nn.Module | dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters and buffers (or state-dict entries) holding a NaN or infinite value."""
    items = source.state_dict().items() if isinstance(source, nn.Module) else source.items()
    return [name for name, value in items
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def check_finite(source: nn.Module | dict[str, torch.Tensor], what: str = "the model") -> None:
    """Raise :class:`NonFiniteWeightsError` naming the tensors of ``source`` that are not finite."""
    bad = nonfinite_tensors(source)
    if bad:
        more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
        raise NonFiniteWeightsError(f"{what} has NaN or infinite values in {len(bad)} tensor(s): "
                                    f"{', '.join(bad[:6])}{more}; training diverged (lower the lr, or enable grad_clip)")


def save_encoder(
    encoder: VisionTransformer,
    directory: str | Path,
    extra: dict[str, Any] | None = None,
    *,
    stats: NormStats | None = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> Path:
    """Write ``model.safetensors`` (timm key names) and ``config.json`` into ``directory``.

    The folder is what timm reads from a model hub or a local directory: ``config.json`` has
    timm's ``architecture``, ``num_classes``, ``model_args`` and ``pretrained_cfg`` (written by
    timm's own ``save_config_for_hf``), so after ``import asit`` (which registers the
    architectures) ``timm.create_model("local-dir:" + directory, pretrained=True)`` builds and
    loads it. Beside timm's keys it names the input size and shape, the fbank settings and
    normalisation statistics the encoder expects, the asit version, and everything in ``extra``
    (e.g. the pretraining preset and epoch). Returns the directory. An encoder with a NaN or infinite
    weight is refused (:class:`NonFiniteWeightsError`): nothing is written.
    """
    # Here, not at the top: _hub is a private timm module (a timm that moves it breaks only this
    # writer, not `import asit`), and asit/__init__.py imports this module before it is complete.
    from timm.models._hub import save_config_for_hf

    from asit import __version__

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    check_finite(state, f"the encoder to save in {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / "model.safetensors") as handle:  # a full disk: DiskFullError, old file kept
        handle.write(save_safetensors(state, metadata={"format": "pt"}))
    img_size = list(encoder.patch_embed.img_size)
    shape = {"embed_dim": encoder.embed_dim, "depth": len(encoder.blocks), "num_heads": encoder.blocks[0].attn.num_heads}
    asit_fields = {
        "img_size": img_size,
        "patch_size": list(encoder.patch_embed.patch_size),
        "in_chans": int(encoder.patch_embed.proj.in_channels),
        **shape,
        "fbank": {
            "sample_rate": sample_rate,
            "num_mel_bins": int(img_size[1]),
            "frame_shift_ms": FRAME_SHIFT_MS,
            "frame_length_ms": FRAME_LENGTH_MS,
        },
        "norm_stats": None if stats is None else {"mean": stats.mean, "std": stats.std},
        "asit_version": __version__,
        **(extra or {}),
    }
    save_config_for_hf(
        encoder,
        str(directory / "config.json"),
        model_config=asit_fields,
        model_args={**shape, "img_size": img_size, "in_chans": asit_fields["in_chans"]},
        data_config={"input_size": (asit_fields["in_chans"], *img_size)},
    )
    return directory


class EncoderConfigError(ValueError):
    """A saved encoder's ``config.json`` that cannot describe one of our encoders (one line)."""


# Bounds on a saved config, far past any ASiT model, so that a crafted or damaged config.json is
# refused before it asks for terabytes (embed_dim=1e6) or builds 1e5 blocks.
CONFIG_BOUNDS = {"embed_dim": (8, 4096), "depth": (1, 64), "num_heads": (1, 64), "num_classes": (0, 100_000)}
MAX_CONFIG_FRAMES, MAX_CONFIG_MEL_BINS = 100_000, 1024


def read_encoder_config(config_path: str | Path) -> dict[str, Any]:
    """Read and check a saved encoder's ``config.json``; :class:`EncoderConfigError` names the
    file and the field that is wrong.

    ``architecture`` must be one of this package's registered encoders (a name such as
    ``hf-hub:...`` would make timm fetch another model instead of the local weights), and the
    shape fields must be whole numbers within :data:`CONFIG_BOUNDS`.
    """
    config_path = Path(config_path)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise EncoderConfigError(f"{config_path}: not a readable encoder config ({err})") from None
    if not isinstance(config, dict):
        raise EncoderConfigError(f"{config_path}: a JSON object expected, found {type(config).__name__}")
    known = [f"asit_vit_{size}_patch16" for size in SIZES]
    if config.get("architecture") not in known:
        raise EncoderConfigError(f"{config_path}: architecture {config.get('architecture')!r} is not one of {', '.join(known)} "
                                 "(only this package's encoders load, from the local weights)")
    for key, (low, high) in CONFIG_BOUNDS.items():
        value = config.get(key, 0 if key == "num_classes" else None)
        if value is None and key != "num_classes":
            continue  # absent: the architecture's standard value
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise EncoderConfigError(f"{config_path}: {key} {value!r} is not a whole number in [{low}, {high}]")
    if "embed_dim" in config and "num_heads" in config and config["embed_dim"] % config["num_heads"]:
        raise EncoderConfigError(f"{config_path}: embed_dim {config['embed_dim']} is not divisible by num_heads {config['num_heads']}")
    size = config.get("img_size")
    if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            or not (PATCH_SIZE <= size[0] <= MAX_CONFIG_FRAMES and PATCH_SIZE <= size[1] <= MAX_CONFIG_MEL_BINS)):
        raise EncoderConfigError(f"{config_path}: img_size {size!r} is not [frames, mel bins] within "
                                 f"[{PATCH_SIZE}, {MAX_CONFIG_FRAMES}] x [{PATCH_SIZE}, {MAX_CONFIG_MEL_BINS}]")
    return config


def load_encoder(path: str | Path, num_frames: int | None = None, num_classes: int = 0, **kwargs) -> VisionTransformer:
    """Build the encoder saved by :func:`save_encoder` and load its weights through timm.

    Args:
        path: the directory, or its ``model.safetensors`` (``config.json`` must sit beside it).
        num_frames: input length to build for (``None``: the saved one); the positional embedding
            is resized.
        num_classes: classifier size (0: none). A saved classifier is kept only if its size matches.
        kwargs: more ``timm.create_model`` arguments (e.g. ``drop_path_rate``).

    Returns:
        the encoder, with the saved config as ``encoder.asit_config``. The config is checked first
        (:func:`read_encoder_config`); only the local weights file is read.
    """
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    config = read_encoder_config(weights.parent / "config.json")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such weights file (save_encoder writes model.safetensors beside config.json)")
    num_frames = num_frames or config["img_size"][0]
    # Rebuild the saved shape (a preset may use fewer blocks than the size's standard 12).
    shape = {key: config[key] for key in ("embed_dim", "depth", "num_heads") if key in config}
    encoder = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(weights), num_classes=config.get("num_classes", 0)),
        img_size=(num_frames, config["img_size"][1]),
        num_classes=num_classes,
        **{**shape, **kwargs},
    )
    encoder.asit_config = config
    return encoder


# The released checkpoint layout, read from the public code (github.com/Sara-Ahmed/ASiT, commit
# d8cfe45, main_ASiT.py and vision_transformer.py). Verified there: checkpoint.pth holds
# {"student", "teacher", "optimizer", "epoch", "args" (argparse.Namespace), "loss_cls",
# "loss_data", "fp16_scaler"}; the student is DDP-wrapped ("module." prefix), the teacher is not;
# FullPipeline names its parts backbone / head_cls / head_recons; the backbone's key names equal
# timm's (patch_embed.proj, cls_token, pos_embed, blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
# mlp.fc2}, norm); CLSHead has mlp.{0,2,4} and weight-normed cls_layer / data_layer
# (nn.utils.weight_norm: weight_g, weight_v); RECHead has mlp.{0,2,4} and convTrans.
# Assumed (not seen): released weight files use the same layout; "head." as another name of
# head_cls (as in DINO); newer PyTorch parametrization names in place of weight_g / weight_v.
_RELEASED_RENAMES = (
    ("head_cls.cls_layer.", "projection.global_layer."),
    ("head_cls.data_layer.", "projection.local_layer."),
    ("head_cls.", "projection."),
    ("head_recons.convTrans.", "reconstruction.conv_transpose."),
    ("head_recons.", "reconstruction."),
    ("backbone.", "encoder."),
)


def load_released_checkpoint(path: str | Path, which: str = "teacher", num_frames: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Read the authors' pretraining checkpoint and map it to our module names.

    Args:
        path: a ``torch.save`` file with ``student`` / ``teacher`` state dicts (loaded with
            ``weights_only=True``: an untrusted file cannot run code).
        which: ``"teacher"`` (what DINO-style methods evaluate) or ``"student"``.
        num_frames: resize the encoder's positional embedding to this length (``None``: keep).

    Returns:
        ``{"encoder": ..., "projection": ..., "reconstruction": ...}`` state dicts, loadable into
        ``create_encoder(...)``, ``ProjectionHead(...)`` and ``ReconstructionHead(...)`` (or into
        an :class:`ASiT` after prefixing the keys with the part's name).
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    with torch.serialization.safe_globals([argparse.Namespace]):  # the released file stores its args
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    if which not in checkpoint:
        raise KeyError(f"{path}: no {which!r} state dict (keys: {sorted(checkpoint)})")
    out: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "projection": {}, "reconstruction": {}}
    for key, value in checkpoint[which].items():
        key = key.removeprefix("module.")
        if key.startswith("head.") and not key.startswith("head_"):
            key = "head_cls." + key[len("head.") :]
        for old, new in _RELEASED_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        else:
            continue  # nothing else belongs to the model
        key = key.replace(".weight_g", ".parametrizations.weight.original0").replace(".weight_v", ".parametrizations.weight.original1")
        part, name = key.split(".", 1)
        if part == "encoder" and name.startswith(("head.", "fc.")):
            continue  # FullPipeline replaced them with nn.Identity; nothing to load
        out[part][name] = value
    if num_frames is not None:
        out["encoder"] = resize_pos_embed(out["encoder"], _grid(num_frames))
    return out
