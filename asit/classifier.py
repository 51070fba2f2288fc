"""The fine-tuned classifier: the model, its file format, and where its encoder comes from.

- :func:`resolve_checkpoint` turns a ``--checkpoint`` argument into a starting point: a
  pretrained encoder directory or safetensors file, ``"auto"`` (:func:`asit.course.preset_encoder`:
  the course encoder on ``cpu``, else ``<output_dir>/pretrain/<preset>/encoder``; else the newest ``<output_dir>/pretrain/*/encoder``; a random init with a
  warning when there is none), ``"none"`` (random init) or ``"imagenet:<path>"`` (ImageNet ViT
  weights); :func:`build_encoder` builds it at the task's input length (the positional embedding
  is interpolated, ``asit.models.load_encoder``), :func:`same_architecture` gives a random-init
  baseline the shape of whatever encoder a checkpoint holds.
- :class:`AudioClassifier`: encoder + linear head on the class token (``pool="token"``) or the
  mean patch token (``pool="mean"``); ``freeze_encoder`` makes a linear probe.
- :func:`save_classifier` / :func:`load_classifier`: a folder of ``model.safetensors`` (encoder +
  head) and ``config.json`` (``"format": "asit-classifier"``, model size and depth, input frames,
  mel bins, sample rate, normalisation statistics, pooling, class names, task config), which
  :mod:`asit.predict`, :mod:`asit.probe` and :mod:`asit.finetune` share.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from asit import __version__, models
from asit.audio import DEFAULT_SAMPLE_RATE, NUM_MEL_BINS, NormStats
from asit.course import preset_encoder
from asit.tasks import TaskConfig

CLASSIFIER_FORMAT = "asit-classifier"
CLASSIFIER_FORMAT_VERSION = 1
POOLS = ("token", "mean")  # what the head reads: the class token, or the mean of the patch tokens

# Width of a ViT per size name (the models module's sizes).
_SIZE_BY_WIDTH = {192: "tiny", 384: "small", 768: "base"}


# --------------------------------------------------------------------------------------------
# Starting point


def find_pretrained_encoder(output_dir: str | Path, preset: str | None = None) -> Path | None:
    """The pretraining output ``"auto"`` means, or None.

    On the ``cpu`` preset the committed course encoder (:mod:`asit.course`, the longer pretraining
    of the same architecture) when present; else ``<output_dir>/pretrain/<preset>/encoder`` when
    ``preset`` is given and that run exists (so a smoke test run never stands in for the cpu
    preset's encoder); else the newest ``<output_dir>/pretrain/*/encoder`` (by its weights' mtime).
    """
    found = preset_encoder(preset, output_dir) if preset else None
    if found is not None:
        return found
    candidates = [
        d for d in Path(output_dir).glob("pretrain/*/encoder") if (d / "model.safetensors").is_file()
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda d: (d / "model.safetensors").stat().st_mtime)


def resolve_checkpoint(
    checkpoint: str | Path | None, output_dir: str | Path = "results", preset: str | None = None, *, quiet: bool = False
) -> tuple[str, Path | None]:
    """Turn the ``checkpoint`` argument into ``(kind, path)``.

    ``kind`` is ``"pretrained"`` (path: encoder dir or safetensors file), ``"imagenet"`` (path: an
    ImageNet ViT checkpoint) or ``"random"`` (path None). ``"auto"`` looks for
    :func:`find_pretrained_encoder` ``(output_dir, preset)`` and falls back to ``"random"`` with one
    warning (none with ``quiet``) when ``output_dir`` holds no pretraining output; it warns too when
    the encoder it found is another preset's run (not when it is the cpu preset's course encoder).
    """
    text = "none" if checkpoint is None else str(checkpoint)
    if text.lower() in ("none", "random", ""):
        return "random", None
    if text == "auto":
        found = find_pretrained_encoder(output_dir, preset)
        if found is None:
            if not quiet:
                warnings.warn(
                    f"checkpoint='auto' found no pretrained encoder under {Path(output_dir) / 'pretrain'}/*/encoder: "
                    "fine-tuning from a RANDOM initialisation (run the pretraining notebook or `python -m asit.pretrain` first)",
                    stacklevel=2,
                )
            return "random", None
        another_run = found.parent.parent == Path(output_dir) / "pretrain" and found.parent.name != preset
        if preset and another_run and not quiet:
            # e.g. notebook 04 run on smoke, then notebook 12 on gpu: a 4-step encoder would stand in silently
            warnings.warn(
                f"checkpoint='auto': no {preset!r} pretraining under {Path(output_dir) / 'pretrain'}; fine-tuning "
                f"from the newest other run, {found} (preset {found.parent.name!r}): the numbers are that "
                f"encoder's (pretrain on {preset!r} first, or name an encoder in checkpoint)",
                stacklevel=2,
            )
        return "pretrained", found
    if text.startswith("imagenet:"):
        path = Path(text.split(":", 1)[1]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"ImageNet ViT weights not found: {path}")
        return "imagenet", path
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; give an encoder folder (with model.safetensors + config.json), "
            "a .safetensors file, 'auto', 'none' or 'imagenet:<path>'"
        )
    return "pretrained", path


# --------------------------------------------------------------------------------------------
# Model


def model_size_of(encoder: nn.Module) -> str:
    """``tiny`` / ``small`` / ``base`` from the encoder's width."""
    width = int(encoder.embed_dim)
    if width not in _SIZE_BY_WIDTH:
        raise ValueError(f"no ViT size has width {width}; known: {_SIZE_BY_WIDTH}")
    return _SIZE_BY_WIDTH[width]


class AudioClassifier(nn.Module):
    """Encoder + linear head on spectrograms ``(B, 1, T, F)`` -> logits ``(B, C)``.

    The head sees the class token (``pool="token"``) or the mean of the patch tokens
    (``pool="mean"``), both taken after the encoder's final LayerNorm. ``freeze_encoder=True``
    makes a linear probe: the encoder stays in eval mode, gets no gradient and is never updated.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pool: str = "token", freeze_encoder: bool = False):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.encoder = encoder
        self.pool = pool
        self.freeze_encoder = freeze_encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02 if not freeze_encoder else 0.01)
        nn.init.zeros_(self.head.bias)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "AudioClassifier":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen encoder never switches dropout / drop path on
        return self

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """``(B, 1, T, F)`` -> pooled features ``(B, D)``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            tokens = self.encoder.forward_features(spec)  # (B, prefix + N, D), final norm applied
        prefix = getattr(self.encoder, "num_prefix_tokens", 1)
        if self.pool == "token":
            return tokens[:, 0]  # (B, D) class token
        return tokens[:, prefix:].mean(dim=1)  # (B, D) mean of patch tokens

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(spec))  # (B, C)


def _depth_kwargs(depth: int) -> dict[str, int]:
    """``create_encoder`` keyword for a depth (0: the size's standard 12, nothing to pass)."""
    return {"depth": int(depth)} if depth else {}


def encoder_architecture(checkpoint: str | Path | None, output_dir: str | Path, task: TaskConfig) -> dict[str, Any]:
    """``{"model_size", "depth"}`` of the encoder ``checkpoint`` gives ``task``, without loading weights.

    A pretrained encoder's ``config.json`` decides; a random or ImageNet init uses the task's
    ``model_size`` and ``depth`` (0 read as the standard 12).
    """
    kind, path = resolve_checkpoint(checkpoint, output_dir, task.preset, quiet=True)
    if kind == "pretrained":
        config_file = (path if path.is_dir() else path.parent) / "config.json"
        config = json.loads(config_file.read_text())
        size = _SIZE_BY_WIDTH.get(int(config["embed_dim"])) if "embed_dim" in config else None
        if size is None:
            size = str(config.get("architecture", "")).removeprefix("asit_vit_").removesuffix("_patch16")
        return {"model_size": size, "depth": int(config.get("depth", 12))}
    return {"model_size": task.model_size, "depth": int(task.depth or models.SIZES[task.model_size][1])}


def same_architecture(task: TaskConfig, checkpoint: str | Path | None, output_dir: str | Path) -> TaskConfig:
    """``task`` with the ``model_size`` and ``depth`` of the encoder ``checkpoint`` holds.

    The random-init baseline of a "same budget" comparison must have the pretrained encoder's
    shape; ``get_task`` already gives each preset its pretraining preset's shape, this also covers
    a checkpoint from elsewhere (another preset, a released model).
    """
    arch = encoder_architecture(checkpoint, output_dir, task)
    if arch != encoder_architecture("none", output_dir, task):
        print(f"note: the random-init baseline takes the checkpoint's shape: ViT-{arch['model_size']}, {arch['depth']} blocks")
    return dataclasses.replace(task, **arch)


def build_encoder(task: TaskConfig, checkpoint: str | Path | None, output_dir: str | Path, mode: str = "finetune"):
    """The encoder for ``task`` at the task's input length, and a description of where it came from.

    A pretrained encoder brings its own size and depth; a random or ImageNet init is built with
    the task's ``model_size`` and ``depth`` (the pretraining preset's, see :func:`asit.tasks.get_task`).

    Returns:
        ``(encoder, info)`` with ``info = {"kind", "path", "model_size", "depth"}``.
    """
    kind, path = resolve_checkpoint(checkpoint, output_dir, task.preset)
    drop_path = 0.0 if mode == "linear" else task.drop_path_rate
    if kind == "pretrained":
        encoder = models.load_encoder(path, num_frames=task.num_frames, num_classes=0, drop_path_rate=drop_path)
    else:
        encoder = models.create_encoder(
            task.model_size, task.num_frames, num_classes=0, drop_path_rate=drop_path, **_depth_kwargs(task.depth)
        )
        if kind == "imagenet":
            missing, unexpected = models.init_from_imagenet_vit(encoder, _read_state_dict(path))
            if missing:
                warnings.warn(f"ImageNet weights {path} left {len(missing)} encoder tensors at random init: {missing[:4]}", stacklevel=2)
            extra_blocks = sorted({k.split(".")[1] for k in unexpected if k.startswith("blocks.")}, key=int)
            if extra_blocks:
                print(f"note: the encoder has {len(encoder.blocks)} blocks: ImageNet blocks {extra_blocks[0]}-{extra_blocks[-1]} are not used")
    info = {"kind": kind, "path": str(path) if path else None, "model_size": model_size_of(encoder), "depth": len(encoder.blocks)}
    return encoder, info


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a ``.safetensors`` file or a torch checkpoint (``.pth``, tensors only)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------
# Classifier checkpoint (read by asit.predict)


def timm_twin(model: AudioClassifier) -> nn.Module:
    """The plain timm ViT that computes what ``model`` computes, its head inside.

    ``pool="token"`` is timm's ``global_pool="token"``; ``pool="mean"`` is ``global_pool="avg"``
    with ``fc_norm=False`` (the mean of the patch tokens after the final norm, as here).
    """
    encoder = model.encoder
    twin = models.create_encoder(
        model_size_of(encoder), int(encoder.patch_embed.img_size[0]), int(encoder.patch_embed.img_size[1]),
        num_classes=model.head.out_features, drop_path_rate=0.0, global_pool="token" if model.pool == "token" else "avg",
        fc_norm=False, depth=len(encoder.blocks),
    )
    twin.load_state_dict({**encoder.state_dict(), "head.weight": model.head.weight, "head.bias": model.head.bias})
    return twin.eval()


def save_classifier(
    model: AudioClassifier,
    directory: str | Path,
    *,
    classes: list[str],
    task: TaskConfig,
    stats: NormStats,
    multilabel: bool,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    extra: dict | None = None,
) -> Path:
    """Write a fine-tuned classifier: ``model.safetensors`` (encoder + head) and ``config.json``.

    ``config.json`` holds everything needed to rebuild and run it without the training code's
    state: the format tag, the encoder size and input length, the pooling, the class names, and
    the front-end settings (sample rate, frames, mel bins, normalisation statistics). The folder
    is also a timm model folder (:func:`asit.models.save_encoder` of :func:`timm_twin`: timm key
    names, ``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg``), so
    ``timm.create_model("local-dir:" + directory, pretrained=True)`` gives the same logits.
    """
    config = {
        "format": CLASSIFIER_FORMAT,
        "format_version": CLASSIFIER_FORMAT_VERSION,
        "task": task.name,
        "model_size": model_size_of(model.encoder),
        "depth": len(model.encoder.blocks),
        "num_frames": task.num_frames,
        "num_mel_bins": NUM_MEL_BINS,
        "sample_rate": sample_rate,
        "stats": {"mean": stats.mean, "std": stats.std},
        "pool": model.pool,
        "multilabel": multilabel,
        "classes": list(classes),
        "label_names": list(classes),
        "task_config": task.to_dict(),
        "asit_version": __version__,
        **(extra or {}),
    }
    config = json.loads(json.dumps(config, default=str))  # paths and the like as text, as before
    return models.save_encoder(timm_twin(model), directory, extra=config, stats=stats, sample_rate=sample_rate)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[AudioClassifier, dict]:
    """Read a classifier written by :func:`save_classifier` (its folder or its safetensors file)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {path} is not a classifier written by asit.finetune")
    config = json.loads(config_file.read_text())
    if config.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(
            f"{directory} holds a {config.get('format', 'different')!r} checkpoint, not a fine-tuned classifier "
            f"({CLASSIFIER_FORMAT!r}); a pretrained encoder must be fine-tuned first (asit.finetune)"
        )
    encoder = models.create_encoder(
        config["model_size"], config["num_frames"], config["num_mel_bins"], num_classes=0, drop_path_rate=0.0,
        **_depth_kwargs(config.get("depth", 0)),  # classifiers written before depth was recorded have 12 blocks
    )
    model = AudioClassifier(encoder, len(config["classes"]), pool=config["pool"])
    state = load_file(str(directory / "model.safetensors"))
    if "patch_embed.proj.weight" in state:  # timm key names (save_classifier); earlier folders have encoder.* keys
        state = {k if k.startswith("head.") else f"encoder.{k}": v for k, v in state.items()}
    model.load_state_dict(state)
    return model.to(device).eval(), config


__all__ = [
    "AudioClassifier",
    "CLASSIFIER_FORMAT",
    "POOLS",
    "build_encoder",
    "encoder_architecture",
    "find_pretrained_encoder",
    "load_classifier",
    "model_size_of",
    "resolve_checkpoint",
    "same_architecture",
    "save_classifier",
    "timm_twin",
]
