"""Pretraining configuration: one dataclass, a comment per field, four presets.

Presets (``get_preset(name, **overrides)``):

- ``smoke``: the tests; seconds. A tiny ViT on 64-frame crops of a handful of clips.
- ``cpu``:   a laptop; minutes. A 4-block ViT-Ti on 0.96 s crops of the built-in pool, enough to
  see the reconstruction loss fall and to compare the k-NN accuracy with a randomly initialised
  encoder.
- ``gpu``:   a Colab T4; under an hour (estimated, not measured). ViT-S on 6 s crops of the built-in pool.
- ``paper``: ViT-B on AudioSet-2M, the authors' released pretraining code (earlier revision)
  in every behaviour: the dataclass defaults are its values (``notebooks/method.md``,
  "Optimisation (pretraining)").
- ``paper_v2``: the later public revision (16 kHz, 4 local crops of 2 s, 8192 outputs for both
  heads, loss weights 1/2, 1/2, 1, teacher-temperature warm-up 5 epochs, ImageNet initialisation
  when ``init_weights`` names a file).

Every deliberate departure from the released code is a named field (``clip_mode``, ``padding``,
``reconstruction_hidden_dim``, ``schedule_end``, ``roll_once``, ``cls_token_std``, ``sample_rate``,
``masking.block_bounds`` / ``donor`` / ``align`` / ``swap_prob``); :data:`OUR_OPTIONS` holds our
choices, which the ``smoke``, ``cpu`` and ``gpu`` presets take. ``asit/README.md`` ("Released
behaviour and our options") has the table. Any field is one override away (``--set key=value``
on the command line, see :func:`override`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asit.masking import MaskingConfig
from asit.training import apply_settings


def _default_masking() -> MaskingConfig:
    return MaskingConfig.released()


@dataclass
class PretrainConfig:
    # ---------------------------------------------------------------- run
    preset: str = "paper"  # which preset these values came from; names the run folder by default
    run_name: str = ""  # sub-folder of <output_dir>/pretrain/; "" = the preset's name
    output_dir: str = "results"  # runs go to <output_dir>/pretrain/<run_name>/
    seed: int = 0  # seeds model init, data order, crops, masks; a resumed run restores RNG states
    device: str = "auto"  # "auto": CUDA, else MPS, else CPU; under torchrun each rank takes its local GPU
    resume: str = "auto"  # "auto": continue from <run_dir>/checkpoint.pth if present; "never": start over
    # (delete nothing); or a path to a checkpoint

    # ---------------------------------------------------------------- model
    model_size: str = "base"  # tiny | small | base (ViT-B is the paper's model, 86 M parameters)
    depth: int = 0  # transformer blocks; 0 = the size's standard 12. The CPU presets use fewer so a
    # laptop pretrains in minutes; the saved encoder records its depth and loads back with it
    num_frames: int = 592  # fbank frames per global view: 592 = 6 s at 10 ms hop (paper), 37 x 8 patches
    sample_rate: int = 32_000  # as released (earlier revision); the later one 16 kHz. Audio is resampled
    drop_path_rate: float = 0.1  # stochastic depth in the student only (the teacher has none)
    global_dim: int = 8192  # class-token head output (prototypes); paper 8192. Fewer for small data
    local_dim: int = 1024  # patch-token head output; 1024 earlier revision, 8192 later one
    head_hidden_dim: int = 2048  # projection head MLP width (paper 2048, as DINO). For a tiny ViT on
    # short crops the 2048-wide MLP costs more than the encoder; the CPU presets shrink it
    head_bottleneck_dim: int = 256  # projection head output before the prototypes (paper 256)
    reconstruction_hidden_dim: int = 768  # reconstruction MLP width: 768 whatever the encoder (released);
    # 0 = the encoder's width (ours: a ViT-Ti / ViT-S head in proportion; the same at ViT-B)
    cls_token_std: float = 0.02  # class-token init, truncated normal (released); 0 = timm's (std 1e-6)
    init_weights: str = ""  # an ImageNet ViT state dict of the same width to start the encoder from
    # (the later revision's option); "" = random init (earlier revision)

    # ---------------------------------------------------------------- data
    datasets: list[str] = field(default_factory=list)  # [] = the built-in unlabelled pool
    # (asit.datasets.pretraining_pool's default); or names such as ["audioset"]
    data_root: str = ""  # "" = the built-in copies under data/builtin; else a folder holding each named data
    # set in a subfolder named as the built-in ones, or (one data set) the unpacked data set itself
    max_clips: int = 0  # 0 = every clip; >0 keeps the first N (smoke tests, quick looks)
    batch_size: int = 32  # clips per process per step; global batch = batch_size x processes
    # (the released command: 32 per GPU on 4 GPUs; the later one 20). Halve it on out-of-memory.
    num_workers: int = 4  # data-loading processes per rank; they only decode, resample and crop
    roll_prob: float = 0.5  # probability of rolling a clip in time before cropping (paper 0.5)
    roll_once: bool = True  # one roll per clip, both crops cut from it (released); False: each view its own
    padding: str = "waveform"  # short clips: "waveform" zero-pads the waveform, silent frames are
    # log(eps) (released); "fbank" zero-pads the fbank (AST's fine-tuning pipeline), see FbankFrontend
    num_global_views: int = 2  # global crops per clip: teacher and student see both (cross-view loss)
    num_local_crops: int = 0  # extra 192-frame crops for the class-token loss only (DINO multi-crop);
    # 0 = earlier revision (default), 4 = later revision. Costs student compute only.
    local_crop_frames: int = 192  # frames per local crop (2 s)
    view_eq_db: float = 0.0  # each global view through its own random equaliser (level, tilt, low-pass
    # roll-off, up to this many dB; asit.augment.random_equaliser); 0 = off (ASiT has none)
    view_noise_snr: float = 0.0  # each global view over its own steady noise floor, this many to 30 more
    # dB below its loudest frame (asit.augment.random_noise_floor); 0 = off (ASiT has none)
    view_warp: float = 0.0  # each global view's frequency axis scaled by its own factor in
    # [1/(1+w), 1+w] (a voice's pitch and formants; asit.augment.random_frequency_warp); 0 = off (ASiT has none)

    # ---------------------------------------------------------------- optimisation
    epochs: int = 100  # paper: 100 epochs on AudioSet-2M
    base_lr: float = 5e-4  # peak lr = base_lr * global_batch / 256 (linear scaling rule, as DINO/MAE).
    # Unstable (loss spikes, NaN)? Lower it, or lengthen warmup_epochs.
    min_lr: float = 1e-6  # end of the cosine
    warmup_epochs: float = 10  # linear lr warm-up from 0 (paper 10)
    weight_decay: float = 0.04  # start of the cosine weight-decay schedule (paper 0.04)
    weight_decay_end: float = 0.4  # end of it (paper 0.4); biases and norms get none
    clip_grad: float = 3.0  # gradient clipping threshold (paper 3.0); 0 = no clipping. Lower it if unstable
    clip_mode: str = "per_parameter"  # "per_parameter": each tensor's own norm <= clip_grad (released
    # utils.clip_gradients); "global_norm": one norm over all (torch clip_grad_norm_), see asit.clipping
    schedule_end: str = "released"  # cosine schedules: "released" formula (last step one short of the
    # final value); "exact": the last step is the final value, see asit.schedules
    momentum_teacher: float = 0.996  # teacher EMA momentum, cosine to 1.0 (paper). With few steps per
    # epoch (small data) 0.99 lets the teacher follow faster
    warmup_teacher_temp: float = 0.04  # teacher softmax temperature at the start (paper 0.04)
    teacher_temp: float = 0.07  # after the warm-up (paper 0.07); too high can collapse (uniform output)
    warmup_teacher_temp_epochs: int = 30  # linear rise 0.04 -> 0.07 (earlier revision 30, later 5)
    student_temp: float = 0.1  # student softmax temperature (paper 0.1)
    center_momentum: float = 0.9  # EMA of the teacher's batch mean, subtracted to avoid collapse (0.9)

    # ---------------------------------------------------------------- objectives (ablations)
    use_global: bool = True  # class-token cross-view self-distillation
    use_local: bool = True  # patch-token self-distillation (same view, same position)
    use_reconstruction: bool = True  # GMML: L1 reconstruction of the masked pixels
    weight_global: float = 1.0  # total = wg*L_global + wl*L_local + wr*L_rec: (1, 1, 2) earlier
    weight_local: float = 1.0  # revision (default); (0.5, 0.5, 1) later revision
    weight_reconstruction: float = 2.0
    masking: MaskingConfig = field(default_factory=_default_masking)  # group masking (GMML),
    # see asit.masking.MaskingConfig: masked fraction, block sizes, corruption type

    # ---------------------------------------------------------------- engineering
    amp: str = "auto"  # "auto": bf16 where supported, fp16 + GradScaler on older CUDA GPUs, off on CPU;
    # "bf16" | "fp16" | "off". fp16 NaNs? try "off" or "bf16"
    compile: bool = False  # torch.compile the student (faster on recent GPUs after a slow first step)
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    save_every: int = 1  # numbered checkpoint every N epochs (checkpoint.pth is updated at each)
    save_every_steps: int = 0  # also refresh checkpoint.pth every N steps inside an epoch (0 = off);
    # lets a killed run resume mid-epoch
    keep_last: int = 2  # numbered checkpoints kept (0 = all)
    knn_every: int = 0  # k-NN monitor every N epochs (0 = off; the last epoch is always measured when on)
    knn_dataset: str = "esc50"  # a labelled data set for the monitor (built-in copy unless knn_data_root)
    knn_data_root: str = ""  # "" = built-in
    knn_max_clips: int = 0  # cap on clips per split for the monitor (0 = all)
    knn_clip_frames: int = 0  # 0: each clip's first num_frames; >0: its first knn_clip_frames cut into
    # windows of num_frames (50 % overlap), class tokens averaged (short pretraining crops see the whole 5 s event)
    knn_k: int = 20  # neighbours (DINO's 20)
    knn_temperature: float = 0.07  # weight exp(sim / T) (DINO's 0.07)
    nan_policy: str = "stop"  # non-finite loss or weights: "stop" (keep the last good checkpoint, say
    # where) or "skip" (undo the step, count it; more than asit.training.MAX_SKIPPED_SHARE skipped fails the run)
    log_every: int = 10  # steps between progress-bar updates (each is one host-device sync)

    # ---------------------------------------------------------------- helpers
    @property
    def name(self) -> str:
        return self.run_name or self.preset

    def run_dir(self) -> Path:
        return Path(self.output_dir) / "pretrain" / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "PretrainConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PretrainConfig field(s): {', '.join(unknown)}")
        if isinstance(data.get("masking"), dict):
            masking = dict(data["masking"])
            for key, value in masking.items():  # JSON turns tuples into lists
                if isinstance(value, list):
                    masking[key] = tuple(value)
            data["masking"] = MaskingConfig(**masking)
        return cls(**data)

    @classmethod
    def from_json(cls, source: str | Path) -> "PretrainConfig":
        text = Path(source).read_text() if not str(source).lstrip().startswith("{") else str(source)
        return cls.from_dict(json.loads(text))


# Fields that may differ between a checkpoint and the run that resumes it: they change neither
# the model's shapes nor the meaning of the step counter. Changing `epochs` stretches the
# remaining cosine schedules (allowed: "train 50 more epochs"). Everything else must match.
MAY_CHANGE_ON_RESUME = (
    "epochs",
    "resume",
    "device",
    "output_dir",
    "num_workers",
    "save_every",
    "save_every_steps",
    "keep_last",
    "knn_every",
    "knn_dataset",
    "knn_data_root",
    "knn_max_clips",
    "knn_clip_frames",
    "knn_k",
    "knn_temperature",
    "nan_policy",
    "log_every",
    "compile",
    "grad_checkpointing",
    "data_root",
)


def _our_options() -> dict[str, Any]:
    """Our departures from the released code, all at once (``asit/README.md`` says why for each)."""
    return dict(
        sample_rate=16_000,
        clip_mode="global_norm",
        schedule_end="exact",
        padding="fbank",
        roll_once=False,
        reconstruction_hidden_dim=0,
        cls_token_std=0.0,
        masking=MaskingConfig(),  # no swap route, full block bounds, donor another clip
    )


OUR_OPTIONS = tuple(_our_options())  # the fields the smoke, cpu and gpu presets take from _our_options


def _smoke() -> PretrainConfig:
    return PretrainConfig(
        **_our_options(),
        preset="smoke",
        model_size="tiny",
        depth=2,  # seconds on a CPU: the tests and nbval run every notebook on this preset
        num_frames=64,  # 0.64 s: 4 x 8 patches
        global_dim=256,
        local_dim=64,
        head_hidden_dim=128,
        head_bottleneck_dim=64,
        max_clips=8,
        batch_size=4,
        num_workers=0,
        epochs=2,
        warmup_epochs=1,
        warmup_teacher_temp_epochs=1,
        momentum_teacher=0.99,
        local_crop_frames=32,
        knn_every=0,  # off (the unit tests run without the built-in data); notebook 04 turns it on
        knn_max_clips=16,  # 16 + 16 clips when on: exercises the path, the numbers mean nothing
        log_every=1,
        save_every_steps=0,
    )


def _cpu() -> PretrainConfig:
    # Sized for notebook 04 on a 2-core laptop: 180 steps, two to three minutes (results/HISTORY.md).
    # The downstream notebooks start from the course encoder (asit.course), not from this run.
    return PretrainConfig(
        **_our_options(),
        preset="cpu",
        model_size="tiny",
        depth=4,  # 4 of ViT-Ti's 12 blocks: 1.8 M encoder parameters
        num_frames=96,  # 0.96 s crops (a spoken word, an event's onset): 6 x 8 patches
        global_dim=64,  # 64 prototypes a head (small data, small heads; results/HISTORY.md has the comparisons)
        local_dim=64,
        num_local_crops=4,  # DINO multi-crop: the student's class token also matches 4 short crops to the teacher
        head_hidden_dim=512,  # the paper's 2048-wide head would cost more than this encoder
        head_bottleneck_dim=128,
        max_clips=0,  # the whole built-in pool (726 clips): 45 steps per epoch
        batch_size=16,
        num_workers=1,  # decoding is cheap next to the step; a second worker only competes for the 2 cores
        epochs=4,  # 180 steps: a demonstration that the losses fall, not the course's encoder
        base_lr=5e-3,  # peak lr 3.1e-4 after the 16/256 scaling: few steps, small data
        warmup_epochs=1,
        warmup_teacher_temp_epochs=2,
        momentum_teacher=0.99,  # a faster teacher for few steps (the paper's 0.996 barely moves in 180)
        local_crop_frames=48,
        knn_every=4,  # once, at the end (plus the random-init baseline)
        knn_max_clips=0,  # ESC-50-like events, fold 1: 160 labelled clips, 40 queries
        knn_clip_frames=480,  # the 5 s clips' first 480 frames, in 9 windows of 96
        knn_k=10,  # 16 labelled clips per class: DINO's k = 20 would outvote every class
        log_every=3,
    )


def _gpu() -> PretrainConfig:
    # Not measured here (no GPU in the session that set it): an estimate for a Colab T4, fp16.
    # ViT-S on 6 s crops, 64 spectrograms of 296 tokens per step, 21 steps per epoch on the
    # built-in pool: 2,100 steps, expected well under an hour including the k-NN monitor.
    # Lower `epochs` if Colab's session limit is near; the schedules follow the paper's proportions.
    return PretrainConfig(
        **_our_options(),
        preset="gpu",
        model_size="small",
        num_frames=592,
        global_dim=4096,
        local_dim=1024,
        batch_size=32,
        num_workers=2,  # Colab gives 2 vCPUs
        epochs=100,
        warmup_epochs=10,
        warmup_teacher_temp_epochs=30,
        momentum_teacher=0.99,
        knn_every=10,
        log_every=20,
    )


def _paper() -> PretrainConfig:
    # Every value is the dataclass default, read from the authors' released code (main_ASiT.py and
    # its modules): ViT-B, 592 x 128 crops of 32 kHz audio, one roll per clip, waveform padding,
    # AdamW lr 5e-4 x global batch / 256 (32 per GPU x 4 GPUs), 10 warm-up epochs, cosine to 1e-6
    # (the released formula), wd 0.04 -> 0.4, per-parameter clipping at 3.0, teacher momentum
    # 0.996 -> 1, teacher temperature 0.04 -> 0.07 over 30 epochs, student 0.1, heads 8192 / 1024,
    # reconstruction head 768 wide, losses (1, 1, 2), masking 0.5-0.7 with the swap route on half
    # the samples (MaskingConfig.released), 100 epochs on AudioSet-2M.
    return PretrainConfig(preset="paper", datasets=["audioset"], num_workers=8, knn_every=10, log_every=50)


def _paper_v2() -> PretrainConfig:
    # The later public revision, as summarised in notebooks/method.md; what it
    # does not name stays as in `paper`. ImageNet initialisation: --set init_weights=<file>.
    return dataclasses.replace(
        _paper(),
        preset="paper_v2",
        sample_rate=16_000,
        num_local_crops=4,
        local_crop_frames=192,  # 2 s
        global_dim=8192,
        local_dim=8192,
        weight_global=0.5,
        weight_local=0.5,
        weight_reconstruction=1.0,
        warmup_teacher_temp_epochs=5,
        batch_size=20,  # per GPU in the later command
        masking=MaskingConfig.released(min_fraction=0.5, max_fraction=0.5),
    )


PRESETS = {"smoke": _smoke, "cpu": _cpu, "gpu": _gpu, "paper": _paper, "paper_v2": _paper_v2}


def get_preset(name: str, **overrides: Any) -> PretrainConfig:
    """A fresh :class:`PretrainConfig` for preset ``name``, with keyword overrides applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


# The pretraining-strategies ablation (notebook 05): every variant of a preset gets this same
# budget, smaller than the preset's own run so that eight variants fit where one run did.
ABLATION_BUDGET: dict[str, dict[str, Any]] = {
    "smoke": dict(epochs=1, knn_every=1),  # 2 steps per variant: tests the notebook, shows nothing
    # cpu: no local crops and the 512 / 256 heads, so that eight variants cost about one preset run
    "cpu": dict(depth=2, num_frames=64, local_crop_frames=32, epochs=2, warmup_epochs=0.5, momentum_teacher=0.9,
                num_local_crops=0, global_dim=512, local_dim=256,
                warmup_teacher_temp_epochs=1, knn_every=2, knn_clip_frames=448, save_every=0, log_every=21),  # 90 steps
    "gpu": dict(epochs=20, warmup_epochs=2, warmup_teacher_temp_epochs=6, knn_every=20, save_every=0),
    "paper": dict(epochs=10, warmup_epochs=1, warmup_teacher_temp_epochs=3, knn_every=10, save_every=0),
    "paper_v2": dict(epochs=10, warmup_epochs=1, warmup_teacher_temp_epochs=1, knn_every=10, save_every=0),
}


def ablation_preset(name: str, **overrides: Any) -> PretrainConfig:
    """Preset ``name`` at the ablation budget (:data:`ABLATION_BUDGET`), with ``overrides`` on top."""
    return get_preset(name, **{**ABLATION_BUDGET[name], **overrides})


def override(cfg: PretrainConfig, *assignments: str) -> PretrainConfig:
    """A copy of ``cfg`` with ``"key=value"`` assignments applied (the CLI's ``--set``), by the one
    ``--set`` grammar both configs share (:func:`asit.training.apply_settings`)."""
    return apply_settings(cfg, assignments)


__all__ = ["PretrainConfig", "PRESETS", "OUR_OPTIONS", "ABLATION_BUDGET", "MAY_CHANGE_ON_RESUME", "ablation_preset", "get_preset", "override"]
