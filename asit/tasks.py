"""One named fine-tuning config per downstream task of the ASiT paper, and its presets.

The paper fine-tunes the pretrained encoder on audio event classification (AudioSet-20K,
AudioSet-2M, ESC-50), keyword spotting (Speech Commands V1 = KS1, V2 = KS2) and speaker
identification (VoxCeleb1). Its release says the fine-tuning follows AST's recipes (Gong et al.
2021, "AST: Audio Spectrogram Transformer"); the ``paper`` preset below is that recipe as quoted
in ``notebooks/method.md``, section "Fine-tuning". Every config names, in
``source``, where each of its defaults comes from.

Presets scale the recipe to the hardware (see :func:`get_task`):

- ``smoke``: tiny ViT, short inputs, 2 steps per epoch, 1 epoch: seconds; for tests and CI.
- ``cpu``: tiny ViT, a few epochs on the built-in data: minutes on 2 CPU cores.
- ``gpu``: ViT-S, the recipe's input length, augmentations and learning rate, fewer epochs:
  an hour or so on one GPU on the official data.
- ``paper``: ViT-B and the recipe, unchanged.

A pretrained checkpoint brings its own architecture. ``model_size`` and ``depth`` build the
encoder of a random init (``checkpoint="none"``, or ``"auto"`` when no pretraining output is
found) and of an ImageNet init; :func:`get_task` copies them from the pretraining preset of the
same name (:func:`asit.config.get_preset`) when it is called, so the random-init baseline of a
preset always has the shape of the encoder that preset pretrains, and the "same budget"
comparison differs only by the initial weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import asit.config
from asit.session import PRESETS

AST_SOURCE = "AST's published recipe, as quoted in notebooks/method.md ('Fine-tuning')"


@dataclass
class TaskConfig:
    """Everything a fine-tuning run needs besides the data location and the starting checkpoint."""

    # --- what the task is ---
    name: str  # task key: esc50, audioset_20k, audioset_2m, ks1, ks2, voxceleb1 (results/<name>/...)
    title: str  # human-readable name for tables and plots
    dataset: str  # name for asit.datasets.get_dataset
    # extra get_dataset options (e.g. the Speech Commands protocol)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    metric: str = "accuracy"  # the metric the task is judged by: "accuracy" or "mAP"
    multilabel: bool = False  # True: multi-hot targets, sigmoid + BCE loss (AudioSet); else softmax + CE
    preset: str = "paper"  # smoke | cpu | gpu | paper (set by get_task)

    # --- input ---
    num_frames: int = 1024  # fbank frames per clip (10 ms each); the positional embedding is resized to it
    random_crop: bool = True  # training crops at a random start
    eval_windows: bool = True  # validation and test score each whole clip: the mean of its num_frames
    # windows' scores (50 % overlap, as asit.predict), so a clip longer than the input is heard in full.
    # False: one crop from the clip's start (AST, whose recipes' inputs hold the whole clip anyway)

    # --- model ---
    model_size: str = "base"  # tiny | small | base, used only when no pretrained checkpoint is loaded
    depth: int = 0  # transformer blocks of that encoder; 0 = the size's standard 12 (get_task copies
    # model_size and depth from the pretraining preset of the same name: same shape as its encoder)
    drop_path_rate: float = 0.1  # stochastic depth while fine-tuning (0 for a linear probe)
    pool: str = "token"  # features the head sees: "token" = class token, "mean" = mean of patch tokens

    # --- optimisation ---
    epochs: int = 25  # passes over the training split
    batch_size: int = 12  # clips per optimisation step
    lr: float = 5e-5  # peak learning rate of AdamW (full fine-tuning)
    linear_lr: float = 1e-3  # peak learning rate of the linear probe (only the head trains: larger)
    weight_decay: float = 5e-7  # AdamW weight decay (AST: 5e-7)
    layer_decay: float = 1.0  # layer-wise lr decay: block l of L trains at layer_decay ** (L - l) of the lr
    # (BEiT / MAE / Audio-MAE fine-tuning use 0.65-0.75); 1.0: off, as in AST's recipes
    warmup_epochs: float = 1.0  # linear warm-up before the decay
    schedule: str = "cosine"  # "cosine" (our default: warm-up, then cosine to min_lr) or "step" (AST-style)
    min_lr: float = 1e-7  # end of the cosine
    lr_decay_start: int = 5  # step schedule: first epoch whose lr is decayed
    lr_decay_rate: float = 0.85  # step schedule: lr factor per epoch from lr_decay_start on (AST-style step decay)
    clip_grad: float | None = None  # max gradient norm; None: no clipping (AST does not clip); pretraining's name
    label_smoothing: float = 0.0  # cross-entropy label smoothing (single-label tasks only)

    # --- augmentation (on the device, see asit.augment) ---
    freq_mask: int = 48  # SpecAugment: widest frequency mask in mel bins (0: off)
    time_mask: int = 192  # SpecAugment: widest time mask in frames (0: off)
    mixup: float = 0.0  # probability that a clip is mixed with another (AST's "mixup" setting)
    mixup_alpha: float = 10.0  # mixup weight ~ Beta(alpha, alpha) (AST: Beta(10, 10))
    background_noise: float = 0.0  # probability of background-noise mixing (keyword spotting only)
    noise_snr: tuple[float, float] = (0.0, 20.0)  # SNR range in dB of the background noise

    # --- data and protocol ---
    sampler: str = "shuffle"  # "shuffle" or "weighted" (AudioSet-2M: the data set's sample_weights())
    train_split: str = "train"  # get_dataset split to train on
    val_split: str | None = "val"  # split that picks the best epoch; None: hold out val_fraction of train_split
    test_split: str = "test"  # split of the final numbers (never used to choose anything)
    val_fraction: float = 0.1  # share of train_split held out for validation when val_split is None
    manifests: dict[str, str] = field(default_factory=dict)  # AudioSet: {"train": json, "eval": json}
    # for the training and test splits (absolute, or relative to data_root); {}: the documented names
    folds: tuple[int, ...] = ()  # ESC-50: test folds to run (cross-validation); empty: the task has fixed splits
    max_train_items: int | None = None  # cap on training clips (smoke preset); None: all
    max_eval_items: int | None = None  # cap on validation / test clips (smoke preset); None: all
    max_steps_per_epoch: int | None = None  # cap on steps per epoch (smoke preset); None: the whole split
    num_workers: int = 2  # DataLoader worker processes (0: load in the main process)
    cache_fbanks: bool | str = False  # compute each clip's fbank once and crop every epoch from an
    # on-disk cache (asit.fbank_cache, under <data_dir>/cache/finetune): for many epochs over a small
    # data set. True: always; "builtin": only on the built-in data (a real KS2 or AudioSet would
    # make a cache of gigabytes); False: never. Needs background_noise == 0 (noise is mixed into
    # waveforms, which the cache does not hold)
    eval_batch_size: int | None = None  # evaluation batch; None: 2 x batch_size

    source: str = ""  # where the defaults come from (paper recipe or our choice)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The paper-preset recipe of each task. Fields not given keep the dataclass defaults above.
# AST's Speech Commands V2 recipe, shared by both keyword tasks (KS1 applies it to V1's 12 classes).
_KEYWORD_RECIPE = dict(
    metric="accuracy",
    num_frames=128,  # 1 s clips
    epochs=30,
    batch_size=128,
    lr=2.5e-4,
    freq_mask=48,
    time_mask=48,
    mixup=0.6,
    background_noise=0.8,  # our choice: mix _background_noise_ at 0-20 dB with probability 0.8
)


_RECIPES: dict[str, dict[str, Any]] = {
    "esc50": dict(
        title="ESC-50",
        dataset="esc50",
        metric="accuracy",
        num_frames=512,
        epochs=30,
        batch_size=48,
        lr=1e-4,
        freq_mask=24,
        time_mask=96,
        mixup=0.0,
        folds=(1, 2, 3, 4, 5),
        source=(
            f"{AST_SOURCE}: 5-fold CV on the official folds, lr 1e-4, 25-35 epochs (30 here), batch 48, "
            "SpecAugment 24/96, no mixup, about 512 frames (ESC-50 clips are 5 s = 500 frames, padded to a "
            "multiple of 16). Our choice: the best epoch is chosen on the 'val' split, a part held out "
            "inside the training folds (asit.datasets.ESC50), never on the test fold; AdamW with warm-up "
            "+ cosine instead of AST's Adam + step decay."
        ),
    ),
    "audioset_20k": dict(
        title="AudioSet-20K",
        dataset="audioset",
        train_split="train",
        val_split=None,
        test_split="eval",
        metric="mAP",
        multilabel=True,
        num_frames=1024,
        epochs=25,
        batch_size=12,
        lr=5e-5,
        freq_mask=48,
        time_mask=192,
        mixup=0.5,
        source=(
            f"{AST_SOURCE}: balanced set, lr 5e-5, 25 epochs, batch 12, SpecAugment 48/192, mixup 0.5, "
            "1024 frames (10 s clips), BCE, metrics mAP / mean AUC / d-prime, tested on the eval set. Our "
            "choice: AudioSet has no validation split, so 10 % of the training clips are held out to pick "
            "the epoch (AST picked it on the eval set); AdamW with warm-up + cosine."
        ),
    ),
    "audioset_2m": dict(
        title="AudioSet-2M",
        dataset="audioset",
        train_split="train_full",
        val_split=None,
        val_fraction=0.01,
        test_split="eval",
        metric="mAP",
        multilabel=True,
        num_frames=1024,
        epochs=5,
        batch_size=12,
        lr=1e-5,
        warmup_epochs=0.1,
        freq_mask=48,
        time_mask=192,
        mixup=0.5,
        sampler="weighted",
        source=(
            f"{AST_SOURCE}: full (unbalanced) set with balanced sampling (the data set's sample_weights()), "
            "lr 1e-5, 5 epochs, batch 12, SpecAugment 48/192, mixup 0.5, 1024 frames, BCE, tested on the "
            "eval set. Our choice: 1 % of the training clips (~20k) held out to pick the epoch, a tenth of an "
            "epoch of warm-up (an epoch is ~170k steps), then cosine."
        ),
    ),
    "ks1": dict(
        title="Speech Commands V1 (KS1)",
        dataset="speech_commands_v1",
        dataset_options={"protocol": "ks1"},
        **_KEYWORD_RECIPE,
        source=(
            f"{AST_SOURCE} for Speech Commands V2 (lr 2.5e-4, 30 epochs, batch 128, SpecAugment 48/48, "
            "mixup 0.6, 128 frames), applied to V1 with the SUPERB 12 classes (10 words + silence + "
            "unknown). Our choice: background-noise mixing (p 0.8, 0-20 dB) from _background_noise_, "
            "AdamW with warm-up + cosine."
        ),
    ),
    "ks2": dict(
        title="Speech Commands V2 (KS2)",
        dataset="speech_commands_v2",
        dataset_options={"protocol": "ks2"},
        **_KEYWORD_RECIPE,
        source=(
            f"{AST_SOURCE}: 35 classes, official validation/testing lists, lr 2.5e-4, 30 epochs, batch 128, "
            "SpecAugment 48/48, mixup 0.6, 128 frames (1 s clips). Our choice: background-noise mixing "
            "(p 0.8, 0-20 dB) from _background_noise_, AdamW with warm-up + cosine."
        ),
    ),
    "voxceleb1": dict(
        title="VoxCeleb1 speaker identification",
        dataset="voxceleb1",
        metric="accuracy",
        num_frames=400,
        epochs=30,
        batch_size=64,
        lr=1e-4,
        freq_mask=24,
        time_mask=48,
        mixup=0.0,
        source=(
            "The reference fixes only the protocol (1,251 speakers, official iden_split.txt, accuracy). "
            "Our choices: 400-frame (4 s) random crops, because 4 s is VoxCeleb1's shortest utterance, "
            "so no training crop holds padding, and 4 s (200 tokens) keeps a ViT-B batch of 64 affordable; "
            "evaluation on each whole utterance, in 4 s windows with 50 % overlap whose scores are averaged "
            "(as asit.predict scores a file). lr 1e-4 and 30 epochs as for ESC-50; mild SpecAugment 24/48 and no "
            "mixup, since a mixed clip holds two speakers."
        ),
    ),
}

TASKS = tuple(_RECIPES)
# Each task's metric (in percent, as in the paper's table) and title, read by asit.results and the notebooks.
TASK_METRICS: dict[str, str] = {name: recipe.get("metric", TaskConfig.metric) for name, recipe in _RECIPES.items()}
TASK_TITLES: dict[str, str] = {name: recipe["title"] for name, recipe in _RECIPES.items()}

# How each smaller preset changes the recipe. Values given as a dict keyed by task override the
# preset's default for that task only.
_PRESET_CHANGES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        epochs=1,
        batch_size=4,
        max_steps_per_epoch=2,
        max_train_items=16,
        max_eval_items=8,
        warmup_epochs=0.0,
        num_workers=0,
        lr=1e-4,
        folds={"esc50": (1,)},
        num_frames={"esc50": 128, "audioset_20k": 128, "audioset_2m": 128, "ks1": 64, "ks2": 64, "voxceleb1": 64},
        freq_mask=8,
        time_mask={"esc50": 16, "audioset_20k": 16, "audioset_2m": 16, "ks1": 8, "ks2": 8, "voxceleb1": 8},
        source_note="smoke preset (our choice): tiny ViT, short inputs, 1 epoch of 2 steps; checks that the pipeline runs, learns nothing",
    ),
    "cpu": dict(
        # Sized so that one notebook (a pretrained run and a random-init run, ESC-50 over all 5
        # folds) takes one to two minutes on 2 CPU cores, and `make reproduce` under 15; the
        # encoder is the cpu pretraining preset's (4-block ViT-Ti, see asit.config), so inputs
        # and steps are cheap.
        epochs={"esc50": 6, "audioset_20k": 15, "audioset_2m": 1, "ks1": 12, "ks2": 12, "voxceleb1": 20},
        pool="mean",  # the class token of a 4-block ViT-Ti does not learn to gather in a few hundred steps
        batch_size=8,
        eval_batch_size=64,
        lr=3e-4,
        warmup_epochs=0.5,
        drop_path_rate=0.0,
        mixup=0.0,
        background_noise=0.0,
        num_workers=0,
        cache_fbanks="builtin",
        num_frames={"esc50": 96, "audioset_20k": 192, "audioset_2m": 192, "ks1": 96, "ks2": 96, "voxceleb1": 128},
        freq_mask=12,
        time_mask={"esc50": 12, "audioset_20k": 24, "audioset_2m": 24, "ks1": 12, "ks2": 12, "voxceleb1": 12},
        source_note=(
            "cpu preset (our choice, measured on 2 CPU cores): the cpu pretraining preset's 4-block ViT-Ti "
            "(model_size and depth come from asit.config, for the pretrained and the random-init run alike); "
            "0.96 s inputs as in that pretraining (AudioSet 1.92 s, VoxCeleb1 1.28 s), evaluated on whole clips "
            "in windows of that length (eval_windows); a few hundred steps of batch 8 (ESC-50 6 epochs per fold "
            "over all 5 folds, AudioSet 15, KS 12, VoxCeleb1 20) at lr 3e-4 with half an epoch of warm-up. The head "
            "reads the mean patch token (pool 'mean', as Audio-MAE and BEATs fine-tune), not the class token. "
            "Augmentation is light: no mixup, no background noise, no stochastic depth, SpecAugment 12 bins / "
            "12-24 frames. Data: fbanks cached once on disk (cache_fbanks) and read in the main process "
            "(num_workers 0): no worker start-up per epoch, and both cores stay with the model. Why these values: "
            "results/HISTORY.md"
        ),
    ),
    "gpu": dict(
        epochs={"esc50": 20, "audioset_20k": 15, "audioset_2m": 2, "ks1": 10, "ks2": 10, "voxceleb1": 10},
        num_workers=6,
        source_note=(
            "gpu preset (our choice): ViT-S unless the checkpoint says otherwise, the recipe's inputs, "
            "augmentations, batch and learning rate, fewer epochs (ESC-50 20, AudioSet-20K 15, "
            "AudioSet-2M 2, KS 10, VoxCeleb1 10)"
        ),
    ),
    "paper": dict(source_note="paper preset: ViT-B and the recipe unchanged"),
}


def pretraining_architecture(preset: str) -> dict[str, Any]:
    """``{"model_size", "depth"}`` of the encoder that pretraining preset ``preset`` builds.

    Read from :func:`asit.config.get_preset` at every call, so a retuned pretraining preset
    changes the random-init baseline of the downstream preset of the same name with it.
    """
    pretraining = asit.config.get_preset(preset)  # looked up at call time (a retuned preset counts)
    return {"model_size": pretraining.model_size, "depth": int(pretraining.depth)}


def get_task(name: str, preset: str = "paper", **overrides: Any) -> TaskConfig:
    """The config of task ``name`` under ``preset``, with ``overrides`` applied last.

    >>> get_task("ks2", "paper").lr
    0.00025
    >>> get_task("esc50", "smoke", epochs=3).epochs
    3
    """
    if name not in _RECIPES:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(_RECIPES[name])
    changes = dict(_PRESET_CHANGES[preset])
    note = changes.pop("source_note")
    for key, value in changes.items():
        if isinstance(value, dict):
            if name not in value:
                continue
            value = value[name]
        if key == "folds" and not values.get("folds"):
            continue  # only ESC-50 has folds
        values[key] = value
    values.update(pretraining_architecture(preset))
    values["source"] = f"{values['source']} | {note}"
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TaskConfig)}
    if unknown:
        raise TypeError(f"unknown TaskConfig field(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    if "folds" in values:
        values["folds"] = tuple(values["folds"])
    if "noise_snr" in values:
        values["noise_snr"] = tuple(values["noise_snr"])
    return TaskConfig(name=name, preset=preset, **values)


def task_for(dataset: str, choices: tuple[str, ...], task: str = "auto") -> str:
    """The task a notebook runs on ``dataset`` (the course's parameter: ``"builtin"`` or a data set's
    name), out of the notebook's ``choices``. ``task="auto"``: the first choice that reads ``dataset``
    (the first choice for the built-in copy or a folder of one's own); a task that does not read
    ``dataset`` is an error naming the one that does."""
    readers = [name for name in choices if _RECIPES[name]["dataset"] == dataset]
    own_data = dataset in ("builtin", "folder")
    if task == "auto":
        if own_data or readers:
            return (readers or list(choices))[0]
        raise ValueError(f"dataset {dataset!r} is none of this notebook's: {', '.join(choices)} read "
                         f"{', '.join(sorted({_RECIPES[c]['dataset'] for c in choices}))} (or 'builtin')")
    if task not in choices:
        raise ValueError(f"task {task!r} is not one of this notebook's: {', '.join(choices)}")
    if not own_data and task not in readers:
        hint = f"set task={readers[0]!r} (or 'auto')" if readers else "pick the data set it reads"
        raise ValueError(f"task {task!r} reads {_RECIPES[task]['dataset']!r}, not {dataset!r}: {hint}")
    return task


__all__ = ["TaskConfig", "TASKS", "TASK_METRICS", "TASK_TITLES", "get_task", "pretraining_architecture", "task_for"]
