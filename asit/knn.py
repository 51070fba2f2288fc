"""k-NN evaluation of frozen features, as in DINO (``eval_knn.py``, Wu et al. 2018).

Each test clip's class token is compared (cosine similarity) with every training clip's; the
``k`` most similar vote for their class with weight ``exp(similarity / T)``. No training, no
hyper-parameter search: a cheap, honest monitor of how much the encoder has learnt, used during
pretraining and to compare pretraining strategies.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    frontend: nn.Module,
    loader: Iterable[dict],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-token features of every clip in ``loader``, L2-normalised, on the CPU.

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
        if hasattr(encoder, "forward_features"):
            tokens = encoder.forward_features(spec)  # (B, 1 + N, D)
            cls = tokens[:, 0] if tokens.dim() == 3 else tokens
        else:
            cls = encoder(spec)
        feats.append(F.normalize(cls.float(), dim=-1).cpu())
        labels.append(torch.as_tensor(batch["target"]).long().cpu())
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


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


__all__ = ["extract_features", "knn_predict", "knn_accuracy"]
