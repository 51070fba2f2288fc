"""Linear probes of frozen encoders on every task, beside a pooled-fbank reference: ``python -m asit.probe``.

Fine-tuning answers "does this initialisation end up better?", with a 10-20 point spread between
seeds on the small built-in splits. The k-NN monitor (:mod:`asit.knn`) answers "are the frozen
class tokens better?" on 40 queries. Neither is a steady enough measure for tuning pretraining.
This module asks the same question as the k-NN monitor on every task at once, with more clips
and a trained linear read-out, in one to two minutes per encoder on two CPU cores:

1. each clip's spectrogram (the first ``clip_frames`` frames) is cut into windows of the encoder's
   input length (50 % overlap, the last ending at the clip's end: :mod:`asit.windows`); a window's
   features are its class token (``token``), the mean of its patch tokens (``mean``), its patch
   tokens averaged over time per mel band (``bands``) and DINO's linear-evaluation read-out
   (``dino``: the class tokens of the last four blocks and the mean patch token), each averaged
   over the clip's windows;
2. a logistic regression (standardised features, ``C`` chosen by 3-fold cross-validation on the
   training split, never on the test split) is fitted on the training split and scored on the test
   split: accuracy, or mAP for AudioSet's multi-label classes (one regression per class);
3. the same read-out of the per-mel-bin mean and standard deviation of the fbank over the clip
   (``fbank``: no encoder at all) says what a linear model gets from the spectrogram alone. An
   encoder whose features score below it has thrown information away; pretraining is meant to
   lift the frozen features above a random init's and, eventually, above this reference.

Every encoder is probed on exactly the same spectrograms. ``none`` is a random init of the first
checkpoint's shape with seed 0, the same weights a seed-0 pretraining starts from (the notebooks'
random-init baseline); ``none:<seed>`` (``--random-seeds N`` on the command line) draws others. A
random init's score moves by several points from seed to seed on the small built-in splits: that
spread, not one seed's score, is what a pretrained encoder's lead has to clear.

    python -m asit.probe results/pretrain/cpu/encoder                   # + random init + fbank
    python -m asit.probe RUN_A/encoder RUN_B/encoder --tasks esc50,voxceleb1 --out probes.json
    python -m asit.probe results/pretrain/cpu/encoder --random-seeds 4       # random inits of seeds 0-3

On the built-in data the probes describe the synthetic stand-ins only, as every built-in number does.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader

from asit.audio import frames_for_samples
from asit.classifier import model_size_of
from asit.datasets import collate_clips, get_dataset
from asit.datasets.base import good_rows
from asit.features import FbankFrontend
from asit.metrics import mean_average_precision
from asit.models import create_encoder, load_encoder
from asit.windows import windowed_mean

# Regularisation strengths the cross-validation chooses from (inverse of the L2 penalty).
PROBE_CS = (0.01, 0.1, 1.0)
POOLS = ("token", "mean", "bands", "dino")  # encoder_features' read-outs, in the order the rows list them
DINO_BLOCKS = 4  # DINO's linear evaluation of a ViT-S/16 reads the class tokens of its last 4 blocks
RANDOM_INIT = "none"
FBANK = "fbank"


@dataclass(frozen=True)
class ProbeTask:
    """One probe: a data set, the split the read-out is fitted on, the split it is scored on."""

    dataset: str  # asit.datasets.get_dataset name
    train_split: str
    test_split: str
    clip_frames: int  # frames of each clip described (from its start); longer clips are cut there
    options: dict[str, Any] = field(default_factory=dict)  # more get_dataset options
    # Remove each clip's own mean per mel bin from what the encoders see (utterance-level mean
    # normalisation, as speech front ends do): a word does not depend on the voice's average spectrum.
    clip_mean_norm: bool = False


# One probe per kind of task of the paper. ESC-50: fold 1 (its four other folds train the read-out);
# the clip lengths cover a built-in clip (ESC-50 5 s, AudioSet 4 s, VoxCeleb1 up to 6 s).
# ks2_cmn: the same KS2 clips, each clip's mean spectrum removed before the encoders (the pooled-fbank
# reference still reads the clips as they are: removing their mean would only weaken it).
PROBE_TASKS: dict[str, ProbeTask] = {
    "esc50": ProbeTask("esc50", "trainval", "test", 500, {"fold": 1}),
    "ks2": ProbeTask("speech_commands_v2", "train", "test", 100, {"protocol": "ks2"}),
    "ks2_cmn": ProbeTask("speech_commands_v2", "train", "test", 100, {"protocol": "ks2"}, clip_mean_norm=True),
    "voxceleb1": ProbeTask("voxceleb1", "train", "test", 600),
    "audioset": ProbeTask("audioset", "train", "eval", 400),
}
PAPER_PROBE_TASKS = ("esc50", "ks2", "voxceleb1", "audioset")  # one a kind of task: the default run


@dataclass
class ProbeSplit:
    """Whole-clip spectrograms of one split, normalised with the training split's statistics."""

    spec: torch.Tensor  # (M, 1, T, F): what the encoders read
    frames: torch.Tensor  # (M,) valid frames per clip
    targets: np.ndarray  # (M,) class indices, or (M, C) multi-hot
    raw: torch.Tensor | None = None  # spec before clip_mean_norm (the pooled fbank reads it); None: spec

    def subset(self, index) -> "ProbeSplit":
        """The clips at ``index`` (an array of positions), with their raw spectrograms."""
        chosen = torch.as_tensor(index)
        raw = None if self.raw is None else self.raw[chosen]
        return ProbeSplit(self.spec[chosen], self.frames[chosen], self.targets[index], raw)

    def first_frames(self, count: int) -> "ProbeSplit":
        """Every clip cut to its first ``count`` frames."""
        raw = None if self.raw is None else self.raw[:, :, :count]
        return ProbeSplit(self.spec[:, :, :count], self.frames.clamp_max(count), self.targets, raw)


def valid_frames(spec: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``(M, 1, T, 1)``: 1 on each clip's valid frames of ``spec`` ``(M, 1, T, F)``, 0 on its padding."""
    return (torch.arange(spec.shape[2])[None, :] < frames.clamp_min(1)[:, None]).float()[:, None, :, None]


def clip_mean_normalised(spec: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``spec`` with each clip's mean over its valid frames removed per mel bin; padding stays 0."""
    valid = valid_frames(spec, frames)
    mean = (spec * valid).sum(2, keepdim=True) / valid.sum(2, keepdim=True)
    return (spec - mean) * valid


def load_split(task: ProbeTask, split: str, data_root: str | Path | None = None, stats=None, batch_size: int = 64) -> tuple[ProbeSplit, Any]:
    """The first ``task.clip_frames`` frames of every clip of ``split`` (zero-padded), and the data set."""
    data = get_dataset(task.dataset, split, data_root=data_root, num_frames=task.clip_frames, random_crop=False,
                       replace_bad=False, **task.options)  # a bad clip is left out, never counted twice
    frontend = FbankFrontend(task.clip_frames, stats if stats is not None else data.stats, data.sample_rate)
    specs, frames, targets = [], [], []
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_clips):
        batch = good_rows(batch)
        if not len(batch["index"]):
            continue
        lengths = torch.as_tensor(batch["length"])
        specs.append(frontend(batch["wave"], lengths))
        frames.append(torch.tensor([min(frames_for_samples(int(n), data.sample_rate), task.clip_frames) for n in lengths]))
        targets.append(torch.as_tensor(batch["target"]).numpy())
    spec, frames = torch.cat(specs), torch.cat(frames)
    if task.clip_mean_norm:
        return ProbeSplit(clip_mean_normalised(spec, frames), frames, np.concatenate(targets), raw=spec), data
    return ProbeSplit(spec, frames, np.concatenate(targets)), data


@torch.no_grad()
def encoder_features(encoder: nn.Module, split: ProbeSplit, window: int, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Four read-outs of each clip's tokens, each averaged over the clip's windows:

    - ``"token"`` ``(M, D)``: the class token, what ASiT's global distillation trains;
    - ``"mean"`` ``(M, D)``: the mean of the patch tokens over time *and* frequency, what the
      fine-tuning head reads;
    - ``"bands"`` ``(M, F/p * D)``: the patch tokens averaged over time only, one ``D``-vector per
      mel band of patches, concatenated. ``mean`` adds the bands together, so a frequency-specific
      cue (a voice's pitch or formants) that the encoder codes by position is lost there and kept
      here; a score far above ``mean``'s says the encoder holds that cue but pooling removes it;
    - ``"dino"`` ``(M, (n + 1) * D)``: DINO's linear-evaluation read-out (Caron et al. 2021, its
      ``eval_linear.py``): the class token of each of the last ``n`` = :data:`DINO_BLOCKS` blocks
      (fewer in a shallower encoder), each through the final norm, and the mean patch token,
      concatenated. Its last two parts are ``token`` and ``mean``.

    Each clip's valid frames are cut into windows of ``window`` frames (the encoder's input length)
    and the read-outs are averaged over them (:func:`asit.windows.windowed_mean`: 50 % overlap,
    the last window ending at the clip's end).
    """
    spec = split.spec
    if spec.shape[2] < window:
        raise ValueError(f"clips of {spec.shape[2]} frames are shorter than the encoder's {window}-frame input")
    encoder.eval()
    blocks = max(1, min(DINO_BLOCKS, len(encoder.blocks)))  # depth 0: the embedded patches count as the last
    bands = spec.shape[3] // encoder.patch_embed.patch_size[1]  # tokens run time-major: (window / p) rows of `bands`
    dim = encoder.embed_dim

    def read_outs(windows: torch.Tensor) -> torch.Tensor:  # (W, 1, window, F) -> (W, (2 + bands + blocks - 1) * D)
        # the last block's normed tokens are exactly forward_features' (timm puts the class token first)
        layers = _last_layers(encoder, windows, blocks)
        patches, prefix = (t.float() for t in layers[-1])  # (W, N, D), (W, prefix tokens, D)
        earlier = [layer_prefix[:, 0].float() for _, layer_prefix in layers[:-1]]  # the other blocks' class tokens
        per_band = patches.reshape(len(windows), -1, bands, dim).mean(1).flatten(1)  # (W, bands * D)
        return torch.cat([prefix[:, 0], patches.mean(1), per_band, *earlier], dim=1)

    pooled = windowed_mean(read_outs, spec, split.frames, window, chunk=batch_size)
    token, mean, per_band, earlier = pooled.split([dim, dim, bands * dim, (blocks - 1) * dim], dim=1)
    dino = torch.cat([earlier, token, mean], dim=1)  # the blocks' class tokens in order, then the mean patch token
    return {"token": token.numpy(), "mean": mean.numpy(), "bands": per_band.numpy(), "dino": dino.numpy()}


def _last_layers(encoder: nn.Module, windows: torch.Tensor, blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The normed ``(patch tokens, prefix tokens)`` after each of the last ``blocks`` blocks; for an
    encoder without blocks (`asit.label_efficiency`'s depth-0 diagnosis), its embedded patches normed,
    which is what its ``forward_features`` returns and what timm's call refuses to take."""
    if len(encoder.blocks):
        return encoder.get_intermediate_layers(windows, n=blocks, return_prefix_tokens=True, norm=True)
    tokens = encoder.forward_features(windows)
    return [(tokens[:, encoder.num_prefix_tokens:], tokens[:, : encoder.num_prefix_tokens])]


def pooled_fbank(split: ProbeSplit) -> np.ndarray:
    """``(M, 2F)``: each mel bin's mean and standard deviation over the clip's valid frames, of the
    clips as loaded (before any ``clip_mean_norm``)."""
    loaded = split.spec if split.raw is None else split.raw
    spec, valid = loaded[:, 0], valid_frames(loaded, split.frames)[:, 0]  # (M, T, F), (M, T, 1)
    count = valid.sum(1)
    mean = (spec * valid).sum(1) / count
    std = (((spec - mean[:, None]) ** 2 * valid).sum(1) / count).sqrt()
    return torch.cat([mean, std], dim=1).numpy()


def _folds(labels: np.ndarray) -> int:
    """Cross-validation folds the rarest class allows (at most 3; below 2, no search)."""
    counts = np.unique(labels, return_counts=True)[1]
    return int(min(3, counts.min())) if len(counts) > 1 else 0


def _fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, scoring: str) -> np.ndarray:
    """Probabilities of a standardised logistic regression, C chosen by cross-validation on train only."""
    folds = _folds(train_y)
    if folds >= 2:
        model = LogisticRegressionCV(Cs=list(PROBE_CS), cv=folds, scoring=scoring, max_iter=3000)
    else:  # too few clips of some class to cross-validate: the middle strength
        model = LogisticRegression(C=PROBE_CS[len(PROBE_CS) // 2], max_iter=3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny fixtures
        fitted = make_pipeline(StandardScaler(), model).fit(train_x, train_y)
        return fitted.predict_proba(test_x)


def probe_score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, multilabel: bool = False) -> float:
    """Test accuracy (single-label) or mAP (multi-label, one regression per class), in percent."""
    if not multilabel:
        classes = np.unique(train_y)
        if len(classes) < 2:
            raise ValueError("the training split holds a single class: nothing to probe")
        probs = _fit_predict(train_x, train_y, test_x, "accuracy")
        return 100.0 * float((classes[probs.argmax(1)] == test_y).mean())
    scores = np.zeros(test_y.shape, dtype=np.float64)
    for c in range(train_y.shape[1]):
        column = (train_y[:, c] > 0.5).astype(int)
        if column.min() == column.max():  # every training clip positive (or none): a constant score
            scores[:, c] = float(column[0])
            continue
        scores[:, c] = _fit_predict(train_x, column, test_x, "average_precision")[:, 1]
    return 100.0 * mean_average_precision(scores, test_y)[0]  # classes without a test positive are left out


def random_init(seed: int = 0) -> str:
    """The source string of a random init drawn with ``seed``: ``"none"`` (seed 0) or ``"none:<seed>"``."""
    return RANDOM_INIT if seed == 0 else f"{RANDOM_INIT}:{int(seed)}"


def _random_seed(source: str) -> int | None:
    """The seed of a random-init source (``"none"`` or ``"none:<seed>"``), None for a checkpoint path."""
    head, colon, seed = str(source).partition(":")
    if head != RANDOM_INIT:
        return None
    if colon and not seed.isdigit():
        raise ValueError(f"a random init is 'none' or 'none:<seed>' with a seed >= 0, got {source!r}")
    return int(seed) if colon else 0


def _encoder(source: str | Path | nn.Module, reference: nn.Module | None) -> nn.Module:
    """A loaded checkpoint, or (``"none"``, ``"none:<seed>"``) a random init with ``reference``'s shape."""
    if isinstance(source, nn.Module):
        return source
    seed = _random_seed(str(source))
    if seed is None:
        return load_encoder(source)
    if reference is None:
        raise ValueError("a random init needs a checkpoint to copy the shape of: probe a checkpoint too")
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        encoder = create_encoder(model_size_of(reference), num_frames=reference.patch_embed.img_size[0], depth=len(reference.blocks))
    encoder.asit_config = {**getattr(reference, "asit_config", {}), "source": f"random init (seed {seed})"}
    return encoder


def run_probes(
    encoders: Mapping[str, str | Path | nn.Module],
    tasks: Sequence[str] = PAPER_PROBE_TASKS,
    data_root: Mapping[str, str | Path] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Probe every encoder (name -> checkpoint path, ``"none"`` / ``"none:<seed>"`` or a module) and the fbank reference.

    ``data_root`` maps a task to its real data set's folder; tasks left out read the built-in copy.
    Each encoder reads windows of its own input length. Returns one row per (task, features, pool):
    ``{"task", "metric", "features", "pool", "score", "train_clips", "test_clips"}``.
    """
    unknown = [t for t in tasks if t not in PROBE_TASKS]
    if unknown:
        raise ValueError(f"unknown probe task(s) {unknown}; choose from {', '.join(PROBE_TASKS)}")
    loaded: dict[str, nn.Module] = {}
    reference = None
    for name, source in encoders.items():
        if isinstance(source, nn.Module) or _random_seed(str(source)) is None:
            loaded[name] = _encoder(source, None)
            reference = reference or loaded[name]
    for name, source in encoders.items():
        if name not in loaded:
            loaded[name] = _encoder(source, reference)
    rows = []
    for task_name in tasks:
        task = PROBE_TASKS[task_name]
        root = (data_root or {}).get(task_name)
        train, data = load_split(task, task.train_split, root)
        test, _ = load_split(task, task.test_split, root, stats=data.stats)
        multilabel = bool(data.multilabel)  # AudioSet: one regression per class, scored by mAP
        metric = "mAP" if multilabel else "accuracy"
        common = {"task": task_name, "metric": metric, "train_clips": len(train.targets), "test_clips": len(test.targets)}
        rows.append({**common, "features": FBANK, "pool": "mel mean+std",
                     "score": probe_score(pooled_fbank(train), train.targets, pooled_fbank(test), test.targets, multilabel)})
        for name, encoder in loaded.items():
            window = encoder.patch_embed.img_size[0]
            train_f, test_f = encoder_features(encoder, train, window), encoder_features(encoder, test, window)
            for pool in POOLS:
                score = probe_score(train_f[pool], train.targets, test_f[pool], test.targets, multilabel)
                rows.append({**common, "features": name, "pool": pool, "score": score})
        if progress:
            print(" | ".join(f"{r['features']} {r['pool']} {r['score']:.1f}" for r in rows if r["task"] == task_name),
                  f"<- {task_name} ({metric}, {common['train_clips']} / {common['test_clips']} clips)", flush=True)
    return rows


def table(rows: list[dict[str, Any]]):
    """The rows as a pandas table: one row per features x pool, one column per task."""
    frame = pd.DataFrame(rows)
    return frame.pivot_table(index=["features", "pool"], columns="task", values="score", sort=False).round(1)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m asit.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="encoder folders (asit.pretrain's <run>/encoder)")
    parser.add_argument("--tasks", default=",".join(PAPER_PROBE_TASKS), help=f"comma-separated, from {', '.join(PROBE_TASKS)}")
    parser.add_argument("--no-random-init", action="store_true", help="leave out the random-init encoders")
    parser.add_argument("--random-seeds", type=int, default=1, metavar="N",
                        help="random inits of seeds 0..N-1 (default 1: seed 0, the pretraining's own starting point). "
                             "Their spread is the noise a pretrained encoder's lead has to clear")
    parser.add_argument("--data-root", action="append", default=[], metavar="TASK=DIR",
                        help="a task's real data set (repeatable); the others read the built-in copy")
    parser.add_argument("--out", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    encoders: dict[str, str] = {}
    for path in args.checkpoints:
        name = str(Path(path).parent.name if Path(path).name == "encoder" else Path(path).name)
        encoders[name if name not in encoders else str(path)] = path
    if args.random_seeds < 1:
        parser.error("--random-seeds must be at least 1")
    if not args.no_random_init:
        for seed in range(args.random_seeds):
            encoders["random init" if seed == 0 else f"random init (seed {seed})"] = random_init(seed)
    roots = {}
    for item in args.data_root:
        task, _, folder = item.partition("=")
        if not folder:
            parser.error(f"--data-root expects TASK=DIR, got {item!r}")
        roots[task] = folder
    rows = run_probes(encoders, [t.strip() for t in args.tasks.split(",") if t.strip()], roots)
    print()
    print(table(rows).to_string())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"checkpoints": encoders, "probe_cs": PROBE_CS, "rows": rows}, indent=1) + "\n")
    return rows


__all__ = ["PAPER_PROBE_TASKS", "PROBE_TASKS", "ProbeSplit", "ProbeTask", "clip_mean_normalised", "valid_frames", "encoder_features", "pooled_fbank", "probe_score", "random_init", "run_probes", "table", "main"]


if __name__ == "__main__":
    main()
