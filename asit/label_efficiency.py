"""What pretraining buys when labels are scarce: ``python -m asit.label_efficiency``.

Self-supervised pretraining pays off where labelled data is scarce (SimCLR's, DINO's and MAE's
label-efficiency figures). This module draws ``k`` labelled training clips per class (1, 2, 4, 8,
or all of them) over several seeds, and scores three kinds of features on the task's test split:

- the pretrained encoder (a checkpoint folder, e.g. ``results/pretrain/cpu/encoder``);
- the same architecture from a random init, one init per seed (``none:<seed>``, as
  :func:`asit.probe.random_init`), so that the init's own luck is inside the drawn spread;
- the pooled fbank (each mel bin's mean and standard deviation over the clip: no learning), the
  reference that says what a linear model gets from the spectrogram alone.

Two protocols:

- ``probe``: frozen features, logistic regression (:func:`asit.probe.probe_score`; ``C`` by
  cross-validation on the drawn clips only when each class has at least two). Every read-out of
  :data:`asit.probe.POOLS` is scored; the figure and the verdicts show :data:`PROBE_POOL`, DINO's
  linear-evaluation read-out (files written before it existed show ``mean``: :func:`pool_shown`);
- ``finetune``: the whole encoder plus a linear head on its mean patch token, trained for a fixed
  number of steps on random windows of the drawn clips, scored by averaging logits over a test
  clip's windows (:func:`finetune_few`; both the windows of :mod:`asit.windows`). The fbank
  reference has nothing to fine-tune: its probe is scored whatever the protocols (it takes
  seconds) and drawn, dashed, beside the fine-tuned curves too.
  Two recipes (:data:`FINETUNE_RECIPES`, ``--finetune-recipe``): ``short``, 60 steps from a random
  head, and ``lpft``, the head first fitted on the frozen encoder (linear probing, then fine-tuning:
  Kumar et al., 2022), then 300 gentler steps of the whole model.

Seed ``s`` draws the labelled clips (the same clips for every encoder) and the random init; the
spread over seeds is drawn in the figure. ESC-50 is scored on its fold 1 by default (40 built-in
test clips, 2.5 points a clip); ``--folds 1-5`` scores every fold in turn, each fold's labelled
clips drawn from its four other folds, and reports the mean over the folds (the paper's 5-fold
protocol: every clip scored once, five times the test clips). ``ks2_cmn`` is KS2 with each clip's
own mean spectrum removed from the encoders' input (:data:`asit.probe.PROBE_TASKS`; the fbank
reference reads the clips as loaded). Results go to ``results/label_efficiency/<name>.json`` and a
figure beside it.

    python -m asit.label_efficiency results/pretrain/cpu/encoder --name cpu
    python -m asit.label_efficiency ENC --tasks ks2 --shots 1,4 --seeds 3 --protocols probe
    python -m asit.label_efficiency ENC --tasks esc50 --seeds 5 --folds 1-5   # 5-fold ESC-50
    python -m asit.label_efficiency ENC --tasks ks2_cmn --protocols finetune --finetune-recipe lpft
    python -m asit.label_efficiency ENC --tasks esc50,ks2_cmn --finetune-recipe short,ks2_cmn:lpft --jobs 2
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from asit import probe
from asit.features import clip_windows
from asit.windows import random_window, windowed_mean

TASKS = ("esc50", "ks2", "voxceleb1")  # the single-label tasks with several clips per class to train on
SHOTS = (1, 2, 4, 8, 0)  # labelled clips per class; 0 = every training clip
PROTOCOLS = ("probe", "finetune")
PRETRAINED, RANDOM = "pretrained", "random init"
POOL = "mean"  # what the fine-tuning head reads (the mean patch token): every fine-tuning row's pool
PROBE_POOL = "dino"  # the probe read-out the figure and the verdicts show: DINO's linear evaluation


def pool_shown(result: dict[str, Any]) -> str:
    """The probe read-out a sweep's figure and verdicts show: its ``pool_shown`` (``mean`` in files
    written before the ``dino`` read-out existed)."""
    return result.get("pool_shown", POOL)


def shown(row: dict[str, Any], pool: str = PROBE_POOL) -> bool:
    """Whether a row belongs to the curves of probe read-out ``pool``: that read-out's probe rows,
    every fine-tuning row (whatever ``pool``, the head reads its own) and the pooled fbank's."""
    if row["features"] == probe.FBANK or row["protocol"] == "finetune":
        return True
    return row["pool"] == pool


def draw_shots(targets: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Indices of ``shots`` clips per class (all of a class with fewer; ``shots=0``: every clip), sorted.

    The draw depends only on ``(targets, shots, seed)``; a larger ``shots`` for the same seed
    extends the smaller draw (the first ``shots`` of one fixed per-class permutation), so the
    curve adds labels to the same clips rather than drawing new ones.
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0 (0 = all), got {shots}")
    if shots == 0:
        return np.arange(len(targets))
    rng = np.random.default_rng([seed, 14])
    chosen = [rng.permutation(np.flatnonzero(targets == c))[:shots] for c in np.unique(targets)]
    return np.sort(np.concatenate(chosen))


def shot_label(shots: int) -> str:
    return "all" if shots == 0 else str(shots)


# ---------------------------------------------------------------------------------------------
# Fine-tuning on a handful of clips
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneRecipe:
    """How :func:`finetune_few` trains; ``steps`` is fixed whatever the number of labelled clips."""

    steps: int = 60
    lr: float = 3e-4  # the peak of a one-cycle schedule (10 % warm-up, then cosine to zero)
    head_steps: int = 0  # > 0: first fit the head alone on the frozen encoder's features (LP-FT)
    head_lr: float = 1e-2
    batch_size: int = 16
    weight_decay: float = 0.05

    def words(self) -> str:
        """``"60 steps at lr 3e-04"``, or with the head fitted first, ``"300 head-only steps, then ..."``."""
        whole = f"{self.steps} steps at lr {self.lr:.0e}"
        return f"{self.head_steps} head-only steps, then {whole}" if self.head_steps else whole


# short: the recipe of every sweep before lpft. Its 60 steps leave the training loss near chance on
# the 35 keywords (an under-fitted head on top of a moving encoder), so lpft fits the head first,
# on frozen features, and then moves the whole model gently for longer (Kumar et al., 2022,
# "Fine-Tuning can Distort Pretrained Features"). Both recipes treat every encoder alike.
FINETUNE_RECIPES = {
    "short": FinetuneRecipe(),
    "lpft": FinetuneRecipe(steps=300, lr=1e-4, head_steps=300),
}


def recipe_named(name: str, steps: int | None = None) -> FinetuneRecipe:
    """The recipe called ``name`` (:data:`FINETUNE_RECIPES`), with ``steps`` replacing its own if given."""
    if name not in FINETUNE_RECIPES:
        raise ValueError(f"unknown fine-tuning recipe {name!r}; known: {', '.join(FINETUNE_RECIPES)}")
    recipe = FINETUNE_RECIPES[name]
    return recipe if steps is None else replace(recipe, steps=int(steps))


def recipes_by_task(spec: str, tasks: Sequence[str]) -> dict[str, str]:
    """Each task's recipe name from ``spec``: one name for every task, then ``task:name`` exceptions.

    ``"short"`` -> every task ``short``; ``"short,ks2_cmn:lpft"`` -> ``ks2_cmn`` fitted by ``lpft``,
    the others by ``short``. An exception for a known task that is not swept is unused (a notebook's
    smaller preset sweeps fewer tasks); an unknown task or recipe is an error.
    """
    default, exceptions = "short", {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        task, colon, name = part.rpartition(":")
        if colon:
            exceptions[task.strip()] = name.strip()
        else:
            default = name
    unknown = sorted(set(exceptions) - set(probe.PROBE_TASKS))
    if unknown:
        raise ValueError(f"fine-tuning recipe {spec!r} names the unknown task(s) {', '.join(unknown)}")
    for name in {default, *exceptions.values()}:
        recipe_named(name)  # an unknown recipe fails here, before any training
    return {task: exceptions.get(task, default) for task in tasks}


def parse_protocols(text: str) -> list[str]:
    """``"probe"``, ``"finetune"``, ``"probe,finetune"`` or ``"both"`` -> the protocols to run, in
    :data:`PROTOCOLS` order; anything else is an error before any training (a sweep with no
    protocol would score the pooled fbank alone)."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    names = list(PROTOCOLS) if names == ["both"] else names
    unknown = sorted(set(names) - set(PROTOCOLS))
    if unknown or not names:
        raise ValueError(f"protocols {text!r}: expected probe, finetune, both or probe,finetune")
    return [p for p in PROTOCOLS if p in names]


def recipe_fields(spec: str, tasks: Sequence[str], steps: int | None = None) -> dict[str, dict[str, Any]]:
    """Each task's recipe as :func:`run` records it (``recipes``): the fields of a :class:`FinetuneRecipe`."""
    return {task: asdict(recipe_named(name, steps)) for task, name in recipes_by_task(spec, tasks).items()}


def recipes_run(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each task's fine-tuning recipe (a :class:`FinetuneRecipe`'s fields) as a sweep's json records it.

    Files written before recipes were set per task hold one recipe for all (``finetune``), and
    older ones only its name and steps, or only the steps (the ``short`` recipe).
    """
    if "recipes" in result:
        return result["recipes"]
    name = result.get("finetune_recipe", "short")
    steps = result.get("finetune_steps") or FINETUNE_RECIPES[name].steps  # a file with no steps ran the recipe's
    fields = result.get("finetune") or asdict(replace(FINETUNE_RECIPES[name], steps=steps))
    return {task: fields for task in _tasks_of(result)}


def recipe_names(result: dict[str, Any]) -> dict[str, str]:
    """Each task's fine-tuning recipe name in a sweep's json: :func:`plot`'s ``recipes``."""
    return {task: recipe_of(result, task) for task in _tasks_of(result)}


def _tasks_of(result: dict[str, Any]) -> list[str]:
    """A sweep's tasks in order: its ``tasks``, or (a summary alone) the tasks its rows name."""
    return result.get("tasks") or list(dict.fromkeys(r["task"] for r in result.get("summary", [])))


def recipe_of(result: dict[str, Any], task: str) -> str:
    """The name of the recipe ``task`` was fine-tuned by in a sweep's json (older files: one for all)."""
    if "finetune_recipes" in result:
        return result["finetune_recipes"][task]
    return result.get("finetune_recipe", "short")


class MeanTokenClassifier(nn.Module):
    """Encoder + linear head on the mean patch token (the cpu fine-tuning recipe's read-out)."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, spec: torch.Tensor) -> torch.Tensor:  # (B, 1, T, F) -> (B, D): what the head reads
        tokens = self.encoder.forward_features(spec)
        return tokens[:, getattr(self.encoder, "num_prefix_tokens", 1) :].mean(1)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # (B, 1, T, F) -> (B, C)
        return self.head(self.features(spec))


def finetune_few(
    encoder: nn.Module,
    train: probe.ProbeSplit,
    test: probe.ProbeSplit,
    seed: int,
    recipe: FinetuneRecipe = FINETUNE_RECIPES["short"],
) -> dict[str, Any]:
    """Fine-tune a copy of ``encoder`` on ``train`` (one random window per clip per sample); test accuracy.

    ``recipe.steps`` is fixed whatever the number of clips, so every label count costs the same.
    With ``recipe.head_steps`` > 0 the head is first fitted alone (:func:`fit_head`). The encoder
    given is left untouched. Returns ``{"score", "losses"}`` (the per-step training losses of the
    whole model).
    """
    window = encoder.patch_embed.img_size[0]
    classes, train_y = np.unique(train.targets, return_inverse=True)
    train_w, train_owner = clip_windows(train.spec, train.frames, window)  # the windows test scoring averages
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MeanTokenClassifier(copy.deepcopy(encoder), len(classes))
    if recipe.head_steps:
        fit_head(model, train_w, torch.as_tensor(train_y)[train_owner], recipe.head_steps, recipe.head_lr)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=recipe.steps, pct_start=0.1)
    targets = torch.as_tensor(train_y)
    losses = []
    for _ in range(recipe.steps):
        clips = torch.randint(len(targets), (recipe.batch_size,), generator=generator)
        windows = random_window(train_w, train_owner, clips, generator)  # (B, 1, window, F)
        with torch.random.fork_rng(devices=[]):  # drop path draws from the step's own seed
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            loss = nn.functional.cross_entropy(model(windows), targets[clips])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        mean_logits = windowed_mean(model, test.spec, test.frames, window, chunk=256)  # (M, C)
    predicted = classes[mean_logits.argmax(1).numpy()]
    return {"score": 100.0 * float((predicted == test.targets).mean()), "losses": losses}


def fit_head(model: MeanTokenClassifier, windows: torch.Tensor, targets: torch.Tensor, steps: int, lr: float) -> None:
    """Train ``model.head`` alone, full batch, on the frozen encoder's mean tokens of every training window.

    The linear-probing half of LP-FT: fine-tuning then starts from a head that already reads the
    encoder's features instead of a random one whose gradients reshape them first.
    """
    model.eval()  # no drop path: the features the head learns are the encoder's own
    with torch.no_grad():  # in chunks: a full training split's windows need not fit at once
        features = torch.cat([model.features(chunk) for chunk in windows.split(256)])
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model.head(features), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


def _features(encoder: nn.Module, split: probe.ProbeSplit) -> dict[str, np.ndarray]:
    return probe.encoder_features(encoder, split, encoder.patch_embed.img_size[0])


def scored_folds(task_name: str, folds: Sequence[int] | None) -> list[int | None]:
    """The test folds a sweep of ``task_name`` scores on: ``[None]`` (the probe task's own split) or ``folds``.

    Only a task split by folds (ESC-50) takes ``folds``; the others have one fixed test split.
    """
    if not folds:
        return [None]
    if "fold" not in probe.PROBE_TASKS[task_name].options:
        return [None]
    return [int(f) for f in folds]


def folds_words(folds: Sequence[int]) -> str:
    """``[1]`` -> ``"fold 1"``, ``[1, 2, 3, 4, 5]`` -> ``"folds 1-5"``, ``[2, 4]`` -> ``"folds 2, 4"``."""
    folds = sorted(folds)
    if len(folds) == 1:
        return f"fold {folds[0]}"
    if folds == list(range(folds[0], folds[-1] + 1)):
        return f"folds {folds[0]}-{folds[-1]}"
    return "folds " + ", ".join(map(str, folds))


def _merge_folds(per_fold: list[list[dict[str, Any]]], folds: list[int]) -> list[dict[str, Any]]:
    """One row per point: the score averaged over the test folds (each fold's score kept in ``fold_scores``).

    Every fold of ESC-50 holds the same number of clips per class, so the mean of the folds'
    accuracies equals the accuracy over all clips, each scored once, by a read-out that never saw it.
    """
    merged = []
    point = ("protocol", "features", "pool", "shots", "seed")
    for rows in zip(*per_fold, strict=True):  # the folds' rows come in the same order, point by point
        first = rows[0]
        if any([r[k] for k in point] != [first[k] for k in point] for r in rows):
            raise RuntimeError(f"the folds' rows are out of step at {[first[k] for k in point]}")
        scores = [r["score"] for r in rows]
        row = {**first, "score": float(np.mean(scores)), "fold_scores": scores, "test_folds": folds}
        if "final_loss" in first:
            row["final_loss"] = float(np.mean([r["final_loss"] for r in rows]))
        merged.append(row)
    return merged


def sweep_task(
    task_name: str,
    encoder_path: str | Path | nn.Module,
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    protocols: Sequence[str] = PROTOCOLS,
    finetune: FinetuneRecipe | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
    pools: Sequence[str] = (PROBE_POOL,),
    folds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Every (features, protocol, shots, seed) score of one task: one row each.

    ``pools``: the encoders' probe read-outs (:data:`asit.probe.POOLS`); each costs one regression
    per point, and :func:`diagnose_task` compares them all at one label count.
    ``folds``: ESC-50's test folds (e.g. ``1..5``, the paper's cross-validation); each fold draws
    its labelled clips from its own training folds, and a row's score is the mean over the folds
    (:func:`_merge_folds`). Default: the probe task's fold 1. Other tasks ignore it.
    ``finetune``: how each fine-tuning run trains (default: the ``short`` recipe).

    Rows: ``{"task", "protocol", "features", "pool", "shots", "seed", "score", "train_clips"}``
    (``shots`` 0 = all; ``train_clips``: how many labelled clips were drawn, per fold).
    """
    task = probe.PROBE_TASKS[task_name]
    pretrained = probe._encoder(encoder_path, None)
    randoms = {s: probe._encoder(probe.random_init(s), pretrained) for s in seeds}
    test_folds = scored_folds(task_name, folds)
    per_fold = []
    for fold in test_folds:
        fold_task = task if fold is None else replace(task, options={**task.options, "fold": fold})
        train, data = probe.load_split(fold_task, task.train_split, data_root)
        test, _ = probe.load_split(fold_task, task.test_split, data_root, stats=data.stats)
        if data.multilabel:
            raise ValueError(f"{task_name} is multi-label: label efficiency is measured on single-label tasks")
        label = task_name if fold is None else f"{task_name} fold {fold}"
        per_fold.append(_sweep_split(task_name, label, train, test, pretrained, randoms, shots, seeds, protocols,
                                     finetune or FINETUNE_RECIPES["short"], progress, pools))
    return per_fold[0] if test_folds == [None] else _merge_folds(per_fold, test_folds)


def _sweep_split(task_name, label, train, test, pretrained, randoms, shots, seeds, protocols,
                 finetune, progress, pools) -> list[dict[str, Any]]:
    """:func:`sweep_task`'s rows for one training and one test split."""
    encoders = {(PRETRAINED, s): pretrained for s in seeds}
    encoders.update({(RANDOM, s): randoms[s] for s in seeds})
    fbank_train, fbank_test = probe.pooled_fbank(train), probe.pooled_fbank(test)
    features = {}
    if "probe" in protocols:
        once = {id(enc): (_features(enc, train), _features(enc, test)) for enc in encoders.values()}
        features = {key: once[id(enc)] for key, enc in encoders.items()}  # the pretrained encoder read once
    rows = []
    for k in shots:
        for seed in seeds:
            index = draw_shots(train.targets, k, seed)
            common = {"task": task_name, "shots": k, "seed": seed, "train_clips": len(index)}
            y = train.targets[index]
            # the reference that needs no learning, whatever the protocols: seconds, on every curve
            rows.append({**common, "protocol": "probe", "features": probe.FBANK, "pool": "mel mean+std",
                         "score": probe.probe_score(fbank_train[index], y, fbank_test, test.targets)})
            if "probe" in protocols:
                for name in (PRETRAINED, RANDOM):
                    train_f, test_f = features[(name, seed)]
                    for pool in pools:
                        score = probe.probe_score(train_f[pool][index], y, test_f[pool], test.targets)
                        rows.append({**common, "protocol": "probe", "features": name, "pool": pool, "score": score})
            if "finetune" in protocols:
                for name in (PRETRAINED, RANDOM):
                    result = finetune_few(encoders[(name, seed)], train.subset(index), test, seed, finetune)
                    rows.append({**common, "protocol": "finetune", "features": name, "pool": POOL, "score": result["score"],
                                 "final_loss": float(np.mean(result["losses"][-10:]))})
            if progress:
                scores = [f"{r['protocol']} {r['features']} {r['score']:.1f}" for r in rows[-8:]
                          if r["shots"] == k and r["seed"] == seed and shown(r)]
                print(f"{label} k={shot_label(k)} seed {seed}: " + " | ".join(scores), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Where the information goes: from the pooled fbank to the encoder's read-outs, one step at a time
# ---------------------------------------------------------------------------------------------


def patch_statistics(split: probe.ProbeSplit, patch: int = 16) -> dict[str, np.ndarray]:
    """Linear views of the encoders' input spectrogram at the patch grid (no weights at all).

    - ``"band mean+std"`` ``(M, 2F/p)``: the pooled fbank with mel bins averaged in groups of ``p``
      (what is left once frequency is seen at the patch's resolution);
    - ``"patch mean"`` ``(M, p*p)``: the average 16 x 16 patch over the whole clip: everything a
      linear patch embedding followed by a mean over all patches can pass on;
    - ``"patch mean per band"`` ``(M, F/p * p*p)``: the same average per row of patches (band).
    """
    spec = split.spec[:, 0]  # (M, T, F)
    M, T, F = spec.shape
    t = (T // patch) * patch
    valid = (torch.arange(t)[None, :] < split.frames.clamp_min(1)[:, None]).float()  # (M, t)
    grid = spec[:, :t].reshape(M, t // patch, patch, F // patch, patch)  # (M, rows, p, bands, p)
    rows_valid = valid.reshape(M, t // patch, patch).amax(2)  # (M, rows): a row that holds audio
    weight = (rows_valid / rows_valid.sum(1, keepdim=True))[:, :, None, None, None]
    per_band = (grid * weight).sum(1).permute(0, 2, 1, 3)  # (M, bands, p, p)
    fbank = probe.pooled_fbank(probe.ProbeSplit(split.spec, split.frames, split.targets))  # the encoders' input
    bands = F // patch
    band_stats = fbank.reshape(M, 2, bands, patch).mean(3).reshape(M, 2 * bands)
    return {"band mean+std": band_stats, "patch mean": per_band.mean(1).flatten(1).numpy(),
            "patch mean per band": per_band.flatten(1).numpy()}


def _no_blocks(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` without its transformer blocks: patch embedding, positions, final norm."""
    shallow = copy.deepcopy(encoder)
    shallow.blocks = nn.Sequential()
    return shallow


def diagnose_task(task_name: str, encoder_path: str | Path, shots: int = 4, seeds: Sequence[int] = (0, 1, 2),
                  data_root: str | Path | None = None) -> list[dict[str, Any]]:
    """Probe scores at ``shots`` labels per class of every step between the pooled fbank and the encoders.

    Rows as :func:`sweep_task`'s (protocol ``"diagnose"``): the pooled fbank; :func:`patch_statistics`;
    each encoder's ``cls`` / ``mean`` / ``bands`` read-outs, for the pretrained encoder, a random init
    and the same random init without its transformer blocks (depth 0), all on the same drawn clips.
    """
    task = probe.PROBE_TASKS[task_name]
    train, data = probe.load_split(task, task.train_split, data_root)
    test, _ = probe.load_split(task, task.test_split, data_root, stats=data.stats)
    pretrained = probe._encoder(encoder_path, None)
    window = pretrained.patch_embed.img_size[0]
    views = {(probe.FBANK, "mel mean+std"): (probe.pooled_fbank(train), probe.pooled_fbank(test))}
    first_window, first_train = test.first_frames(window), train.first_frames(window)
    views[(probe.FBANK, f"mel mean+std, first {window} frames")] = (probe.pooled_fbank(first_train), probe.pooled_fbank(first_window))
    raw_train, raw_test = patch_statistics(train), patch_statistics(test)
    views.update({("spectrogram", name): (raw_train[name], raw_test[name]) for name in raw_train})
    rows = []
    for seed in seeds:
        index = draw_shots(train.targets, shots, seed)
        random = probe._encoder(probe.random_init(seed), pretrained)
        encoders = {PRETRAINED: pretrained, RANDOM: random, f"{RANDOM}, no blocks": _no_blocks(random)}
        seed_views = dict(views)
        for name, encoder in encoders.items():
            train_f, test_f = _features(encoder, train), _features(encoder, test)
            seed_views.update({(name, pool): (train_f[pool], test_f[pool]) for pool in probe.POOLS})
        for (features, pool), (train_x, test_x) in seed_views.items():
            score = probe.probe_score(train_x[index], train.targets[index], test_x, test.targets)
            rows.append({"task": task_name, "protocol": "diagnose", "features": features, "pool": pool,
                         "shots": shots, "seed": seed, "score": score, "train_clips": len(index)})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, min and max over seeds per (task, protocol, features, pool, shots)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["protocol"], r["features"], r["pool"], r["shots"]), []).append(r["score"])
    return [
        {"task": t, "protocol": p, "features": f, "pool": pool, "shots": k, "seeds": len(v),
         "mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
        for (t, p, f, pool, k), v in groups.items()
    ]


def gap(summary: list[dict[str, Any]], task: str, protocol: str, shots: int = 4,
        pool: str = PROBE_POOL) -> dict[str, float]:
    """Pretrained against random init at ``shots``: mean lead and the margin between the seed ranges.

    ``pool``: the probe read-out (a sweep's :func:`pool_shown`); fine-tuning rows match any.

    ``margin`` = worst pretrained seed minus best random-init seed: positive means the two
    ranges do not overlap, every seed of the pretrained encoder above every random init.
    """
    def row(features):
        for r in summary:
            if (r["task"], r["protocol"], r["features"], r["shots"]) == (task, protocol, features, shots) and shown(r, pool):
                return r
        raise KeyError(f"no {features} row for {task} {protocol} k={shots} pool {pool}")

    ours, theirs = row(PRETRAINED), row(RANDOM)
    return {"lead": ours["mean"] - theirs["mean"], "margin": ours["min"] - theirs["max"],
            "pretrained": ours["mean"], "random init": theirs["mean"]}


def rerun_words(stored: dict[tuple[str, int], float], again: list[dict[str, Any]]) -> str:
    """How recomputed scores compare with stored ones, keyed by (features, seed), in words.

    Identical on the machine type that wrote them; elsewhere a near-tied clip may turn, so the
    test a rerun must pass is to land inside the stored seeds' range for the same features.
    """
    pairs = [(stored.get((r["features"], r["seed"])), r) for r in again]
    if all(old == r["score"] for old, r in pairs):
        return f"{len(pairs)} scores recomputed, all identical to the stored ones"
    differences = [None if old is None else round(r["score"] - old, 1) for old, r in pairs]
    words = f"{len(pairs)} scores recomputed, differences {differences}"
    outside = []
    for old, r in pairs:
        same_features = [v for (features, _), v in stored.items() if features == r["features"]]
        if not same_features or not min(same_features) <= r["score"] <= max(same_features):
            outside.append(f"{r['features']} seed {r['seed']} {r['score']:.1f}")
    if outside:
        return words + f"; outside the stored seeds' range: {', '.join(outside)}"
    return words + "; every one inside the stored seeds' range for its features"


def chance_level(rows: list[dict[str, Any]], task: str) -> float | None:
    """Percent a guess scores on ``task``: 100 / classes (a 1-shot draw holds one clip per class), or None."""
    one_shot = [r["train_clips"] for r in rows if r["task"] == task and r["shots"] == 1]
    return 100.0 / one_shot[0] if one_shot else None


def plot(summary: list[dict[str, Any]], path: str | Path | None = None, pool: str = PROBE_POOL,
         esc50_folds: Sequence[int] | None = None, recipes: dict[str, str] | None = None):
    """A row of panels per protocol, a column per task: accuracy against labels per class, seed range shaded.

    ``esc50_folds``: the ESC-50 test folds the scores cover (a result's ``esc50_test_folds``),
    named in that task's panel titles; None names none (the summary alone does not say).
    ``recipes``: each task's fine-tuning recipe (a result's ``finetune_recipes``); a recipe other
    than ``short`` is named in its fine-tuning panel's title.
    ``pool``: the probe read-out drawn (a result's :func:`pool_shown`), named in the probe panels' titles.
    """
    encoders = [r for r in summary if r["features"] != probe.FBANK]
    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p for r in encoders)]
    tasks = list(dict.fromkeys(r["task"] for r in encoders))
    fig, axes = plt.subplots(len(protocols), len(tasks), figsize=(4.2 * len(tasks), 3.4 * len(protocols)),
                             squeeze=False)
    for row, protocol in zip(axes, protocols):
        for ax, task in zip(row, tasks):
            if not any((r["protocol"], r["task"]) == (protocol, task) for r in encoders):
                fig.delaxes(ax)  # e.g. a task swept by one protocol only
                continue
            _draw_panel(ax, summary, protocol, task, pool)
            scored = f" ({folds_words(esc50_folds)})" if task == "esc50" and esc50_folds else ""
            recipe = (recipes or {}).get(task, "short")
            named = f"{protocol} ({recipe})" if protocol == "finetune" and recipe != "short" else protocol
            named = f"probe ({pool})" if protocol == "probe" else named
            ax.set(title=f"{task}{scored}: {named}", xlabel="labelled clips per class", ylabel="test accuracy (%)")
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def _draw_panel(ax, summary: list[dict[str, Any]], protocol: str, task: str, pool: str) -> None:
    """One panel of :func:`plot`: the pretrained and random-init lines, and the pooled fbank's probe."""
    styles = {PRETRAINED: ("C0", "o"), RANDOM: ("C3", "s"), probe.FBANK: ("0.4", "^")}
    for features, (colour, marker) in styles.items():
        # the pooled fbank has only a probe: its line is the reference in every panel of the task
        drawn = "probe" if features == probe.FBANK else protocol
        line = sorted((r for r in summary if (r["protocol"], r["task"], r["features"]) == (drawn, task, features)
                       and shown(r, pool)), key=lambda r: r["shots"] or 10**6)
        if not line:
            continue
        x = np.arange(len(line))
        label = features if drawn == protocol else f"{features} (probe)"
        ax.plot(x, [r["mean"] for r in line], marker=marker, color=colour, label=label,
                linestyle="-" if drawn == protocol else "--")
        ax.fill_between(x, [r["min"] for r in line], [r["max"] for r in line], color=colour, alpha=0.2)
        if len(line) == 1:  # one label count: a shaded band has no width, so the range is a bar
            ax.vlines(x, line[0]["min"], line[0]["max"], color=colour, alpha=0.6, linewidth=3)
        ax.set_xticks(x, [shot_label(r["shots"]) for r in line])
    ax.grid(alpha=0.3)


def recipe_words(result: dict[str, Any]) -> str:
    """A sweep's fine-tuning recipes in words, each with the tasks it fitted when they differ."""
    recipes = recipes_run(result)
    used: dict[tuple[str, str], list[str]] = {}  # (name, words) -> tasks, in the sweep's order
    for task in _tasks_of(result):
        used.setdefault((recipe_of(result, task), FinetuneRecipe(**recipes[task]).words()), []).append(task)
    if len(used) == 1:
        (name, words), = used
        return f"`{name}`, {words}"
    return "; ".join(f"`{name}` ({', '.join(tasks)}), {words}" for (name, words), tasks in used.items())


def markdown(result: dict[str, Any], pool: str | None = None) -> str:
    """The sweep as Markdown: one row per (task, protocol, features), mean [min, max] per label count.

    ``pool``: the probe read-out shown; None: the sweep's own (:func:`pool_shown`)."""
    pool = pool or pool_shown(result)
    summary = [r for r in result["summary"] if shown(r, pool)]
    shots = sorted({r["shots"] for r in summary}, key=lambda k: k or 10**6)
    folds = result.get("esc50_test_folds", [1])
    scored = ""
    if any(r["task"] == "esc50" for r in summary):  # which ESC-50 folds the scores cover
        scored = f"ESC-50 test {folds_words(folds)}; "
    lines = [f"Encoder `{result['encoder']}`; seeds {result['seeds']}; fine-tuning: {recipe_words(result)}; "
             f"{scored}probe read-out `{pool}` (pooled fbank: each mel bin's mean and std). Test accuracy in percent, "
             "seed mean [lowest, highest].", "",
             "| task | protocol | features | " + " | ".join(f"k = {shot_label(k)}" for k in shots) + " |",
             "|---|---|---|" + "---|" * len(shots)]
    keys = sorted({(r["task"], r["protocol"], r["features"]) for r in summary},
                  key=lambda key: (key[0], PROTOCOLS.index(key[1]), [PRETRAINED, RANDOM, probe.FBANK].index(key[2])))
    for key in keys:
        cells = {r["shots"]: r for r in summary if (r["task"], r["protocol"], r["features"]) == key}
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(
            f"{cells[k]['mean']:.1f} [{cells[k]['min']:.1f}, {cells[k]['max']:.1f}]" if k in cells else "" for k in shots) + " |")
    return "\n".join(lines) + "\n"


def _sweep_one_thread(task: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`sweep_task` in a worker process of :func:`run`: one thread, as each small step is fastest."""
    torch.set_num_threads(1)
    return sweep_task(task, **arguments)


def run(
    encoder: str | Path,
    name: str,
    tasks: Sequence[str] = TASKS,
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    protocols: Sequence[str] = PROTOCOLS,
    finetune_steps: int | None = None,
    output_dir: str | Path = "results",
    progress: bool = True,
    folds: Sequence[int] | None = None,
    finetune_recipe: str = "short",
    jobs: int = 1,
) -> dict[str, Any]:
    """The whole sweep; writes ``<output_dir>/label_efficiency/<name>.json`` and ``.png``, returns the json.

    ``folds``: ESC-50's test folds (:func:`sweep_task`); None scores fold 1 only.
    ``finetune_recipe``: a name in :data:`FINETUNE_RECIPES`, or one per task (:func:`recipes_by_task`);
    ``finetune_steps`` replaces every recipe's steps.
    ``jobs`` > 1: that many tasks at once, each in its own process on one thread. Each task draws from
    its own seeds alone, so the rows are those of one task after the other, except that another
    thread count sums in another order: the losses differ in their last bits, and a near-tied test
    clip can turn.
    """
    protocols = parse_protocols(",".join(protocols))  # an unknown one fails here, before any training
    names = recipes_by_task(finetune_recipe, tasks)
    recipes = {task: recipe_named(name, finetune_steps) for task, name in names.items()}
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    started = time.perf_counter()
    arguments = [dict(encoder_path=encoder, shots=shots, seeds=seeds, protocols=protocols, finetune=recipes[task],
                      progress=progress, pools=probe.POOLS, folds=folds)  # every read-out: notebook 06, section 4
                 for task in tasks]  # fmt: skip
    if jobs > 1 and len(tasks) > 1:
        spawn = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=spawn) as pool:
            per_task = list(pool.map(_sweep_one_thread, tasks, arguments))
    else:
        per_task = [sweep_task(task, **kwargs) for task, kwargs in zip(tasks, arguments)]
    rows = [row for task_rows in per_task for row in task_rows]
    summary = summarise(rows)
    result = {
        "encoder": str(encoder), "tasks": list(tasks), "shots": list(shots), "seeds": list(seeds),
        "protocols": list(protocols), "finetune_recipe": finetune_recipe, "finetune_steps": finetune_steps,
        "finetune_recipes": names, "recipes": {task: asdict(recipe) for task, recipe in recipes.items()},
        "pool_shown": PROBE_POOL, "esc50_test_folds": [f for f in scored_folds("esc50", folds) if f is not None] or [1],
        "jobs": jobs, "seconds": round(time.perf_counter() - started, 1), "summary": summary, "rows": rows,
    }  # fmt: skip
    out = Path(output_dir) / "label_efficiency" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(f"# Label efficiency: {name}\n\nWritten by `asit.label_efficiency.run`.\n\n" + markdown(result))
    plt.close(plot(summary, out.with_suffix(".png"), PROBE_POOL, result["esc50_test_folds"], names))
    if progress:
        print(f"wrote {out} and {out.with_suffix('.png')} ({result['seconds']:.0f} s)")
    return result


def diagnose(encoder: str | Path, name: str, tasks: Sequence[str] = TASKS, shots: int = 4,
             seeds: Sequence[int] = (0, 1, 2), output_dir: str | Path = "results") -> dict[str, Any]:
    """:func:`diagnose_task` on each task; writes ``<output_dir>/label_efficiency/<name>_diagnosis.json``."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    rows = [row for task in tasks for row in diagnose_task(task, encoder, shots, seeds)]
    summary = summarise(rows)
    for r in summary:
        print(f"{r['task']:6s} {r['features']:24s} {r['pool']:30s} {r['mean']:5.1f} [{r['min']:.1f}, {r['max']:.1f}]")
    result = {"encoder": str(encoder), "shots": shots, "seeds": list(seeds), "summary": summary, "rows": rows}
    out = Path(output_dir) / "label_efficiency" / f"{name}_diagnosis.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m asit.label_efficiency", description=__doc__.split("\n\n")[0])
    parser.add_argument("encoder", help="the pretrained encoder folder (asit.pretrain's <run>/encoder)")
    parser.add_argument("--name", default=None, help="results/label_efficiency/<name>.json (default: the run's folder name)")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated, from {', '.join(TASKS)} or ks2_cmn (KS2, each clip's mean spectrum removed)")
    parser.add_argument("--shots", default="1,2,4,8,all", help="labelled clips per class; 'all' = the whole training split")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (label draws and random inits)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the seeds are FIRST..FIRST+N-1: e.g. 5 for seeds that played no part in an earlier choice")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="probe, finetune, or both (= probe,finetune)")
    parser.add_argument("--finetune-recipe", default="short",
                        help="short: 60 steps from a random head; lpft: the head fitted first, then 300 gentler steps; "
                             "one per task as e.g. short,ks2_cmn:lpft (the first for every task not named)")
    parser.add_argument("--jobs", type=int, default=1, help="tasks swept at once, one process and one thread each")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="optimizer steps per fine-tuning run (batch 16); default: the recipe's")
    parser.add_argument("--folds", default="1", help="ESC-50's test folds, e.g. 1-5 (the paper's 5-fold "
                        "cross-validation: each fold's read-out learns from the other four); default fold 1")
    parser.add_argument("--output-dir", default="results")
    parser.add_argument("--diagnose", action="store_true",
                        help="instead of the sweep: probe every step from the pooled fbank to the encoders' read-outs "
                             "at the first --shots value (diagnose_task), written to <name>_diagnosis.json")
    args = parser.parse_args(argv)
    path = Path(args.encoder)
    name = args.name or (path.parent.name if path.name == "encoder" else path.stem)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(probe.PROBE_TASKS))
    if unknown or not tasks:
        parser.error(f"--tasks {args.tasks!r}: expected names from {', '.join(probe.PROBE_TASKS)}")
    try:
        shots = [0 if s.strip() == "all" else int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--shots {args.shots!r}: expected whole numbers or 'all', e.g. 1,4,all")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.diagnose:
        return diagnose(args.encoder, name, tasks, shots[0], seeds, args.output_dir)
    try:
        protocols = parse_protocols(args.protocols)
    except ValueError as error:
        parser.error(str(error))
    return run(args.encoder, name, tasks, shots, seeds, protocols,
               args.finetune_steps, args.output_dir, folds=parse_folds(args.folds), finetune_recipe=args.finetune_recipe,
               jobs=args.jobs)


def parse_numbers(text: str) -> list[int]:
    """``"1-5"`` -> [1, 2, 3, 4, 5]; ``"2,4"`` -> [2, 4]; [] when the text names no whole numbers."""
    start, dash, stop = text.partition("-")
    try:
        return list(range(int(start), int(stop) + 1)) if dash else [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        return []


def parse_folds(text: str) -> list[int] | None:
    """``"1"`` -> None (fold 1, the default split); ``"1-5"`` or ``"1,3"`` -> those folds."""
    folds = parse_numbers(text)
    if not folds or min(folds) < 1:
        raise ValueError(f"--folds takes fold numbers from 1, e.g. 1-5 or 1,2; got {text!r}")
    return None if folds == [1] else folds


__all__ = ["POOL", "PROBE_POOL", "pool_shown", "shown", "FINETUNE_RECIPES", "FinetuneRecipe", "recipe_named", "recipe_of", "recipe_words", "recipe_fields", "recipe_names", "recipes_by_task", "parse_protocols", "recipes_run", "fit_head", "chance_level", "rerun_words", "folds_words", "parse_numbers", "parse_folds", "scored_folds", "diagnose", "diagnose_task", "draw_shots", "finetune_few", "patch_statistics", "gap", "markdown", "plot", "run", "summarise", "sweep_task", "main"]


if __name__ == "__main__":
    main()
