"""k-NN evaluation of frozen features, as in DINO (``eval_knn.py``, Wu et al. 2018).

Each test clip's class token is compared (cosine similarity) with every training clip's; the
``k`` most similar vote for their class with weight ``exp(similarity / T)``. No training, no
hyper-parameter search: a cheap, honest monitor of how much the encoder has learnt, used during
pretraining and to compare pretraining strategies.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from asit.audio import DEFAULT_SAMPLE_RATE, frames_for_samples
from asit.datasets import collate_clips, get_dataset
from asit.datasets.base import good_rows
from asit.features import padding_value
from asit.windows import windowed_mean

# The split each labelled data set's k-NN uses as its memory bank (the clips with known labels);
# the queries are always the "test" split. ESC-50's "trainval" is the four training folds of fold 1.
BANK_SPLITS = {"esc50": "trainval"}


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    frontend: nn.Module,
    loader: Iterable[dict],
    device: torch.device | str = "cpu",
    window: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-token features of every clip in ``loader``, L2-normalised, on the CPU.

    ``window > 0``: the spectrogram is cut into windows of ``window`` frames (the encoder's
    pretraining length; :func:`asit.windows.windowed_mean`: 50 % overlap, the last window ending at
    the clip's end) and their class tokens are averaged: the whole clip is described, not only its
    first second. ``window = 0``: the front end's spectrogram goes to the encoder as it is.

    Args:
        encoder: a timm ViT (``forward_features`` returns ``(B, 1 + N, D)`` tokens, the class token
            first) or any module whose output is ``(B, D)``.
        frontend: waveforms ``(B, S)`` + lengths -> spectrograms ``(B, 1, T, F)``
            (:class:`asit.features.FbankFrontend`).
        loader: batches with ``wave`` ``(B, S)``, ``length`` ``(B,)`` and ``target`` ``(B,)``.

    Returns:
        ``(features (M, D) float32, labels (M,) int64)``.
    """
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for batch in loader:
        waves = batch["wave"].to(device, non_blocking=True)
        lengths = torch.as_tensor(batch["length"]).to(device)
        if waves.dim() == 3:  # (B, V, S): several views per clip, use the first
            waves, lengths = waves[:, 0], lengths[:, 0] if lengths.dim() == 2 else lengths
        spec = frontend(waves, lengths)  # (B, 1, T, F)
        if window:
            rate = getattr(frontend, "sample_rate", DEFAULT_SAMPLE_RATE)
            frames = torch.tensor([min(frames_for_samples(int(n), rate), spec.shape[2]) for n in lengths.reshape(-1).tolist()])
            cls = windowed_mean(lambda part: _class_token(encoder, part), spec, frames, window,
                                pad_value=padding_value(getattr(frontend, "stats", None)))
        else:
            cls = _class_token(encoder, spec)
        feats.append(F.normalize(cls.float(), dim=-1).cpu())
        labels.append(torch.as_tensor(batch["target"]).long().cpu())
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def _class_token(encoder: nn.Module, spec: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` float32: a timm ViT's class token (timm puts it first), or a plain encoder's output."""
    if hasattr(encoder, "forward_features"):
        tokens = encoder.forward_features(spec)  # (B, 1 + N, D)
        return (tokens[:, 0] if tokens.dim() == 3 else tokens).float()
    return encoder(spec).float()


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Class scores ``(M_test, C)`` from a weighted vote of the ``k`` nearest training features.

    Features must be L2-normalised (:func:`extract_features` does it).
    """
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    scores = []
    for start in range(0, test_feats.shape[0], chunk):
        sim = test_feats[start : start + chunk] @ train_feats.T  # (b, M_train)
        top_sim, top_idx = sim.topk(k, dim=1)  # (b, k)
        votes = F.one_hot(train_labels[top_idx], num_classes).float()  # (b, k, C)
        weights = (top_sim / temperature).exp()  # (b, k)
        scores.append((votes * weights[..., None]).sum(dim=1))  # (b, C)
    return torch.cat(scores)


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    num_classes: int | None = None,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy (0-1) of the weighted k-NN classifier."""
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return (scores.argmax(dim=1) == test_labels).float().mean().item()


def labelled_loader(
    name: str,
    split: str,
    num_frames: int,
    data_root: str | Path | None = None,
    max_clips: int = 0,
    batch_size: int = 32,
    sample_rate: int = 16_000,
) -> DataLoader:
    """Deterministic clips of a labelled data set for k-NN: crops from the start, no shuffling.

    ``max_clips > 0`` keeps that many clips evenly spread over the split (every class stays present).
    """
    dataset = get_dataset(name, split, data_root=data_root or None, num_frames=num_frames, random_crop=False,
                          sample_rate=sample_rate, replace_bad=False)  # a bad clip is left out, never counted twice
    if max_clips and max_clips < len(dataset):
        step = len(dataset) / max_clips
        dataset = Subset(dataset, [int(i * step) for i in range(max_clips)])
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_clips)


_BATCHES: dict[tuple, list[dict]] = {}  # decoded k-NN clips, reused by the probes of one process
_CACHE_SIZE = 4


def _cached_batches(name: str, split: str, **options) -> list[dict]:
    """The batches of :func:`labelled_loader`, decoded once per process (an ablation builds one probe
    per run: the same clips every time). Deterministic loaders, so reuse changes no number."""
    key = (name, split, *sorted((k, str(v)) for k, v in options.items()))
    if key not in _BATCHES:
        if len(_BATCHES) >= _CACHE_SIZE:
            _BATCHES.pop(next(iter(_BATCHES)))
        batches = (good_rows(batch) for batch in labelled_loader(name, split, **options))
        _BATCHES[key] = [batch for batch in batches if len(batch["index"])]
    return _BATCHES[key]


_ACCURACIES: dict[tuple, float] = {}  # (probe, encoder weights) -> percent, one process


def weights_digest(module: nn.Module) -> str:
    """A digest of ``module``'s structure and every tensor of its state: equal digests, equal outputs."""
    digest = hashlib.sha1(repr(module).encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class KnnProbe:
    """The k-NN evaluation of frozen encoders on one labelled data set, one split, one front end.

    ``clip_frames > 0`` describes each clip by its first ``clip_frames`` frames (rounded down to whole
    windows), cut into windows of the front end's length (the encoder's input) at 50 % overlap, class
    tokens averaged (see :func:`extract_features`); 0 uses one window from the start of each clip.

    The bank (``BANK_SPLITS``, else "train") and the queries ("test") are loaded once and kept as
    waveforms, so several encoders (pretrained, randomly initialised, ablation variants) are compared
    on exactly the same clips, crops and spectrograms::

        probe = KnnProbe("esc50", frontend)
        probe.accuracy(encoder)          # percent
    """

    def __init__(
        self,
        dataset: str,
        frontend: nn.Module,
        data_root: str | Path | None = None,
        max_clips: int = 0,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 32,
        device: torch.device | str = "cpu",
        clip_frames: int = 0,
    ):
        self.dataset, self.k, self.temperature = dataset, k, temperature
        self.device = torch.device(device)
        self.window = frontend.num_frames  # the encoder's input length
        self.windows = max(1, clip_frames // self.window)
        sample_rate = getattr(frontend, "sample_rate", 16_000)
        # the same normalisation as the given front end, over `windows` window lengths
        self.frontend = type(frontend)(self.windows * self.window, frontend.stats, sample_rate=sample_rate).to(self.device)
        self.bank_split = BANK_SPLITS.get(dataset, "train")
        common = dict(num_frames=self.windows * self.window, data_root=data_root, max_clips=max_clips, batch_size=batch_size, sample_rate=sample_rate)
        self.batches = {split: _cached_batches(dataset, split, **common) for split in (self.bank_split, "test")}
        # what decides a score besides the encoder: the same key and weights, the same score
        self._key = (dataset, self.bank_split, *sorted((k, str(v)) for k, v in common.items()),
                     self.window, str(frontend.stats), k, temperature, str(self.device))
        self.num_classes = int(max(int(b["target"].max()) for batches in self.batches.values() for b in batches)) + 1

    @property
    def sizes(self) -> tuple[int, int]:
        """(bank clips, query clips)."""
        return tuple(sum(len(b["target"]) for b in self.batches[s]) for s in (self.bank_split, "test"))

    def features(self, encoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(bank_x, bank_y, query_x, query_y)``: L2-normalised class tokens and labels."""
        bank = extract_features(encoder, self.frontend, self.batches[self.bank_split], self.device, self.window)
        query = extract_features(encoder, self.frontend, self.batches["test"], self.device, self.window)
        return (*bank, *query)

    def accuracy(self, encoder: nn.Module) -> float:
        """Top-1 k-NN accuracy of ``encoder``'s class token on the queries, in percent.

        Remembered per process for each (probe settings, weights): an ablation measures the same
        random init once per variant (notebook 05: eight times), and the answer is deterministic.
        """
        key = (*self._key, weights_digest(encoder))
        if key not in _ACCURACIES:
            bank_x, bank_y, query_x, query_y = self.features(encoder)
            _ACCURACIES[key] = 100.0 * knn_accuracy(bank_x, bank_y, query_x, query_y, k=self.k,
                                                    num_classes=self.num_classes, temperature=self.temperature)
        return _ACCURACIES[key]


__all__ = ["BANK_SPLITS", "KnnProbe", "extract_features", "knn_predict", "knn_accuracy", "labelled_loader", "weights_digest"]
