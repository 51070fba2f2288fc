"""The training core both phases share: parameter groups, mixed precision, lr setting, the
non-finite-loss policy, distributed start-up and the ``--set key=value`` grammar.

Pretraining (:mod:`asit.engine_pretrain`) and fine-tuning (:mod:`asit.engine_finetune`) differ in
what a step computes; everything here is one policy for both, as MAE keeps its ``util/misc.py``
and ``util/lr_decay.py`` beside its two engines.

- :func:`param_groups`: AdamW groups, no weight decay on biases and norms (DINO), optionally none
  on the positional embedding and class token (AST / MAE fine-tuning), and layer-wise lr decay.
- :func:`amp_dtype_for` (pure: the decision from a device's compute capability),
  :func:`resolve_amp`, :func:`autocast`, :func:`grad_scaler`: **bf16 where the GPU computes it
  natively (compute capability 8.0 and up: A100, H100, RTX 30xx/40xx), fp16 with loss scaling on
  older GPUs (a T4 or V100, whose bf16 is emulated and slow), full precision on CPU.** Of the two
  policies this replaces, pretraining's (``resolve_amp``: fp16 + scaler where bf16 is missing) was
  the right one; fine-tuning asked for bf16 on any CUDA device.
- :func:`set_schedules`: one step's lr (times each group's ``lr_scale``) and weight decay.
- :class:`NonFiniteSteps` and :class:`NonFiniteLossError`: non-finite steps (a NaN / inf loss, or
  weights that a step with a finite loss made NaN / inf) counted on the device, read only at log
  points; ``policy="stop"`` raises, ``"skip"`` counts, and :class:`LastGoodState` puts the weights
  and optimiser state of before such a step back. A run that skipped more than
  :data:`MAX_SKIPPED_SHARE` of its steps fails (:func:`check_skipped_share`).
- :class:`DistInfo`, :func:`init_distributed`: the ``torchrun`` process group, with a collective
  timeout of :data:`DIST_TIMEOUT_S` (``ASIT_DIST_TIMEOUT_S``), not PyTorch's 30 minutes.
- :func:`apply_settings`: ``key=value`` strings onto a config dataclass (both CLIs' ``--set``).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable

import torch
import torch.distributed as dist
from timm.models import group_parameters
from torch import nn

from asit.session import pick_device

AMP_MODES = ("auto", "bf16", "fp16", "off")

# ----------------------------------------------------------------------------- parameter groups


def param_groups(
    model: nn.Module, weight_decay: float = 0.0, layer_decay: float = 1.0, decay_embeddings: bool = True
) -> list[dict]:
    """AdamW parameter groups: weight decay on weight matrices only (none on biases and norms).

    ``decay_embeddings=False`` also exempts the positional embedding and the class token (the
    fine-tuning recipes'); pretraining decays them, as DINO does. With ``layer_decay < 1``
    (layer-wise lr decay, as BEiT, MAE and Audio-MAE fine-tune), encoder layer ``l`` of ``L``
    (patch embedding = 0, blocks 1..L, the final norm with the last block) trains at
    ``layer_decay ** (L - l)`` of the lr, the head at the full lr: the early layers a pretrained
    encoder learnt move least.

    Each group carries ``lr_scale`` (multiplies the scheduled lr) and ``apply_decay`` (whether the
    weight-decay schedule reaches it); see :func:`set_schedules`.
    """
    scales: dict[str, float] = {}
    encoder = getattr(model, "encoder", None)
    if layer_decay < 1.0 and encoder is not None and hasattr(encoder, "group_matcher"):
        layers = group_parameters(encoder, encoder.group_matcher(coarse=False), reverse=True)
        top = max(layers.values())
        scales = {f"encoder.{name}": layer_decay ** (top - layer) for name, layer in layers.items()}
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias")
        if not decay_embeddings:
            no_decay = no_decay or "pos_embed" in name or "cls_token" in name
        scale = scales.get(name, 1.0)
        group = groups.setdefault(
            (no_decay, scale),
            {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale, "apply_decay": not no_decay},
        )
        group["params"].append(param)
    return list(groups.values())


def set_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Set one step's lr (times each group's ``lr_scale``) and, if given, the weight decay of the
    groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("apply_decay", False):
            group["weight_decay"] = weight_decay


# ----------------------------------------------------------------------------- mixed precision


def amp_dtype_for(amp: str, device_type: str, capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on a device (``None``: full precision).

    ``"auto"``: off on CPU and MPS; on CUDA bf16 when the GPU computes it natively (compute
    capability 8.0 and up), else fp16, which needs loss scaling (:func:`grad_scaler`). A pure
    function of its arguments, so the policy is testable without a GPU.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off" or (amp == "auto" and device_type != "cuda"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    native_bf16 = capability is not None and capability[0] >= 8
    return torch.bfloat16 if native_bf16 else torch.float16


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """:func:`amp_dtype_for` with the capability of ``device``."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return amp_dtype_for(amp, device.type, capability)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of :func:`resolve_amp`'s dtype (a no-op for ``None``)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None, always: bool = False) -> torch.amp.GradScaler:
    """The loss scaler: dynamic scaling for fp16; otherwise disabled, or with ``always`` a fixed
    scale of 1 (exact), kept for its on-device non-finite check that skips a bad step without
    waiting for the device (pretraining)."""
    fp16 = dtype == torch.float16
    if not (fp16 or always):
        return torch.amp.GradScaler(device.type, enabled=False)
    try:
        return torch.amp.GradScaler(device.type, init_scale=2.0**16 if fp16 else 1.0, growth_interval=2000 if fp16 else 2**30)
    except (RuntimeError, ValueError):  # a backend without GradScaler support
        return torch.amp.GradScaler(device.type, enabled=False)


# ----------------------------------------------------------------------------- non-finite losses


class NonFiniteLossError(FloatingPointError, RuntimeError):
    """The loss became NaN or infinite and the run's policy is to stop."""


# nan_policy="skip": a run that dropped more than this share of its steps ends with an error
# (exit status 2), whatever it saved: one bad step in four means the settings are wrong, not bad luck.
MAX_SKIPPED_SHARE = 0.25


class TooManySkippedSteps(NonFiniteLossError):
    """``nan_policy="skip"`` dropped more than :data:`MAX_SKIPPED_SHARE` of the run's steps."""


def check_skipped_share(skipped: int, steps: int, limit: float = MAX_SKIPPED_SHARE) -> None:
    """Raise :class:`TooManySkippedSteps` when ``skipped`` of ``steps`` is more than ``limit``."""
    if steps > 0 and skipped / steps > limit:
        raise TooManySkippedSteps(
            f"{skipped} of {steps} steps ({skipped / steps:.0%}) had a non-finite loss or left non-finite weights and "
            f"were skipped, more than the {limit:.0%} a run may skip (asit.training.MAX_SKIPPED_SHARE): lower base_lr, "
            "lengthen warmup_epochs, set clip_grad 1.0 or amp=off"
        )


def parameters_finite(params: list[torch.Tensor]) -> torch.Tensor:
    """0-d bool on the device: every value of ``params`` is finite (one fused max-abs, no host sync)."""
    if not params:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack(torch._foreach_norm(params, ord=float("inf")))).all()


class LastGoodState:
    """The parameters and optimiser state from before a step, put back where the step went bad.

    ``snapshot()`` before the step copies them (fused, on the device); ``restore_unless(ok)`` after
    it keeps the new values where ``ok`` (a 0-d bool tensor) and the copies elsewhere, without
    waiting for the device. Optimiser state created by the bad step itself (its first) goes back
    to zeros, a fresh optimiser's. Costs one copy of the weights and of the optimiser state.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer):
        self.module, self.optimizer = module, optimizer
        self._saved: list[torch.Tensor] = []
        self._keys: list[tuple[int, str]] = []

    def _live(self) -> tuple[list[torch.Tensor], list[tuple[int, str]]]:
        tensors, keys = list(self.module.parameters()), []
        for param in self.module.parameters():
            for name, value in sorted(self.optimizer.state.get(param, {}).items()):
                if torch.is_tensor(value):
                    tensors.append(value)
                    keys.append((id(param), name))
        return tensors, keys

    @torch.no_grad()
    def snapshot(self) -> None:
        live, keys = self._live()
        if keys != self._keys or len(live) != len(self._saved):
            self._saved, self._keys = [t.detach().clone() for t in live], keys
        else:
            torch._foreach_copy_(self._saved, live)

    @torch.no_grad()
    def restore_unless(self, ok: torch.Tensor) -> None:
        live, _ = self._live()
        for i, tensor in enumerate(live):
            before = self._saved[i] if i < len(self._saved) else torch.zeros_like(tensor)
            tensor.copy_(torch.where(ok, tensor, before))


class NonFiniteSteps:
    """Counts non-finite steps on the device; the host reads the count only at log points.

    ``policy="stop"``: :meth:`check` raises :class:`NonFiniteLossError`; ``"skip"``: the steps
    are only counted (the gradient scaler has already dropped a non-finite gradient, and
    :class:`LastGoodState` puts back weights a step made non-finite).
    """

    def __init__(self, device: torch.device, policy: str = "stop"):
        if policy not in ("stop", "skip"):
            raise ValueError(f"nan_policy must be 'stop' or 'skip', got {policy!r}")
        self.policy = policy
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.first = torch.full((), -1, dtype=torch.long, device=device)  # global step of the first one

    @torch.no_grad()
    def record(self, finite: torch.Tensor, step: int) -> None:
        """Count step ``step`` if ``finite`` (a 0-d bool tensor) is False; no host sync."""
        self.count += (~finite).long()
        self.first.copy_(torch.where((~finite) & (self.first < 0), torch.tensor(step, device=self.first.device), self.first))

    def check(self, message) -> None:
        """Under ``policy="stop"``, raise ``NonFiniteLossError(message(first_step))`` if any step was bad."""
        if self.policy == "stop" and int(self.count) > 0:
            raise NonFiniteLossError(message(int(self.first)))


# ----------------------------------------------------------------------------- distributed

# How long a collective waits for the slowest process before the job fails. PyTorch's default
# (30 minutes) leaves a hung or stopped rank (SIGSTOP, a stuck file system) holding the whole job
# for half an hour; 10 minutes still covers rank 0 writing a large checkpoint or measuring the
# k-NN monitor while the others wait. Set ASIT_DIST_TIMEOUT_S to change it.
DIST_TIMEOUT_S = 600.0


def dist_timeout() -> timedelta:
    """The collective timeout: ``ASIT_DIST_TIMEOUT_S`` seconds, else :data:`DIST_TIMEOUT_S`."""
    text = os.environ.get("ASIT_DIST_TIMEOUT_S", "")
    try:
        seconds = float(text) if text else DIST_TIMEOUT_S
    except ValueError:
        raise ValueError(f"ASIT_DIST_TIMEOUT_S must be a number of seconds, got {text!r}") from None
    if seconds <= 0:
        raise ValueError(f"ASIT_DIST_TIMEOUT_S must be positive, got {text!r}")
    return timedelta(seconds=seconds)



@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_preference: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when started by ``torchrun`` (nccl on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), pick_device(device_preference)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_preference in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=dist_timeout())
    return DistInfo(rank, world, local_rank), device


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (itself when not distributed)."""
    if info.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= info.world_size
    return tensor


# ----------------------------------------------------------------------------- --set key=value


def _convert(text: str, current: Any, name: str) -> Any:
    """``text`` as a value of the type ``current`` has (the field's present value)."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {text!r}")
    if isinstance(current, int):
        return int(float(text)) if text.strip() else current
    if isinstance(current, float):
        return float(text)
    if isinstance(current, (list, tuple)):
        value = _literal(text) if text.strip()[:1] in "[(" else None
        if isinstance(value, (list, tuple)):  # ["folder"], ('a', 'b'), [1, 2]: a Python / JSON list
            return type(current)(value)
        parts = [p for p in (s.strip() for s in text.strip().strip("()[]").split(",")) if p]
        kind = type(current[0]) if len(current) else _literal_type(parts)
        values = [_convert(p, kind(), name) if kind is not str else p for p in parts]
        return type(current)(values)
    if isinstance(current, str):  # a text field; a bool where the field also takes one ("builtin" / True)
        value = _literal(text)
        return value if isinstance(value, bool) else text
    return _literal(text)  # None, a dict: a Python or JSON literal, else the text


def _literal(text: str) -> Any:
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def _literal_type(parts: list[str]) -> type:
    """The element type of an empty list field's new values: int, float or str."""
    for kind in (int, float):
        try:
            [kind(p) for p in parts]
            return kind
        except ValueError:
            continue
    return str


def apply_settings(cfg: Any, assignments: Iterable[str]) -> Any:
    """A copy of the config dataclass ``cfg`` with ``"key=value"`` assignments applied (``--set``).

    Values are converted to the field's current type (``true``/``false`` for booleans, comma
    separated lists or tuples, ``(1, 2)`` too; Python or JSON literals for fields now ``None``);
    ``outer.field=value`` sets a field of a nested config (``masking.max_fraction=0.5``). A list field
    takes ``a,b`` as well as a literal ``["a", "b"]``.
    """
    cfg = dataclasses.replace(cfg)
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"expected key=value, got {assignment!r}")
        key, text = assignment.split("=", 1)
        key = key.strip()
        outer, attr = key.split(".", 1) if "." in key else ("", key)
        target = getattr(cfg, outer, None) if outer else cfg
        if target is None or not dataclasses.is_dataclass(target) or attr not in {f.name for f in dataclasses.fields(target)}:
            fields = dataclasses.fields(target) if dataclasses.is_dataclass(target) else dataclasses.fields(cfg)
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(f.name for f in fields)}")
        value = _convert(text, getattr(target, attr), key)
        if outer:  # a nested config may be frozen: rebuild it
            cfg = dataclasses.replace(cfg, **{outer: dataclasses.replace(target, **{attr: value})})
        else:
            cfg = dataclasses.replace(cfg, **{attr: value})
    return cfg


__all__ = [
    "AMP_MODES",
    "DIST_TIMEOUT_S",
    "MAX_SKIPPED_SHARE",
    "DistInfo",
    "LastGoodState",
    "TooManySkippedSteps",
    "check_skipped_share",
    "dist_timeout",
    "parameters_finite",
    "NonFiniteLossError",
    "NonFiniteSteps",
    "all_reduce_mean",
    "amp_dtype_for",
    "apply_settings",
    "autocast",
    "grad_scaler",
    "init_distributed",
    "param_groups",
    "resolve_amp",
    "set_schedules",
]
