"""AudioSet (Gemmeke et al. 2017): 10 s YouTube clips, 527 classes, multi-label.

AudioSet is published as lists of YouTube ids, not audio; every group scrapes its own copy.
This loader reads the manifests of the AST recipe (Gong et al. 2021), which ASiT fine-tunes with::

    <data_root>/class_labels_indices.csv     index,mid,display_name (527 rows)
    <data_root>/balanced_train.json          split "train": AS-20K
    <data_root>/unbalanced_train.json        split "train_full": AS-2M (AST's full training set)
    <data_root>/eval.json                    split "eval"

    each json: {"data": [{"wav": "audio/Y--0w1YA1Hm4_30.000.wav", "labels": "/m/0gy1t2s,/m/07p6fty"}, ...]}

``wav`` paths are absolute, or relative to the json's folder. ``manifest=`` reads any other json.
A listed file that is missing is skipped (counted as such), since scraped copies always lack a
few clips. Targets are float multi-hot vectors ``(527,)``; :meth:`sample_weights` gives AST's
balanced sampling weights for the 2M set.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from asit.datasets.base import (
    AudioDataset,
    DatasetLayoutError,
    ensure_split,
    layout_hint,
    require,
    resolve_root,
)

MANIFESTS = {"train": "balanced_train.json", "train_full": "unbalanced_train.json", "eval": "eval.json"}
LABELS_CSV = "class_labels_indices.csv"


def read_class_labels(path: Path, root: Path) -> tuple[list[str], dict[str, int]]:
    """Display names ordered by index, and ``mid -> index``, from ``class_labels_indices.csv``."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"index", "mid", "display_name"} <= set(reader.fieldnames or []):
            raise DatasetLayoutError("audioset", f"columns index,mid,display_name in {path}",
                                     f"columns {reader.fieldnames}", layout_hint(root, "audioset"))
        rows = sorted((int(row["index"]), row["mid"], row["display_name"]) for row in reader)
    if [i for i, _, _ in rows] != list(range(len(rows))):
        raise DatasetLayoutError("audioset", f"indices 0..N-1 in {path}", "gaps or repeats", layout_hint(root, "audioset"))
    return [name for _, _, name in rows], {mid: i for i, mid, _ in rows}


def read_manifest(path: Path, mid_index: dict[str, int], root: Path) -> tuple[list[Path], list[tuple[int, ...]]]:
    """Paths (resolved against the json's folder) and label-index tuples of an AST json manifest."""
    try:
        entries = json.loads(path.read_text())["data"]
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetLayoutError("audioset", f'an AST manifest {{"data": [{{"wav": ..., "labels": ...}}]}} in {path}',
                                 f"unreadable ({err!r})", layout_hint(root, "audioset")) from None
    paths, targets = [], []
    for number, entry in enumerate(entries):
        mids = [m.strip() for m in str(entry.get("labels", "")).split(",") if m.strip()]
        unknown = [m for m in mids if m not in mid_index]
        if "wav" not in entry or unknown or not mids:
            problem = f"labels {unknown} not in {LABELS_CSV}" if unknown else f"entry {entry!r}"
            raise DatasetLayoutError("audioset", f"entries with 'wav' and known 'labels' in {path}",
                                     f"entry {number}: {problem}", layout_hint(root, "audioset"))
        paths.append(path.parent / entry["wav"])  # an absolute 'wav' stays as it is
        targets.append(tuple(sorted({mid_index[m] for m in mids})))
    return paths, targets


class AudioSet(AudioDataset):
    """AudioSet split ``split`` from AST-style manifests (multi-label).

    Args:
        split: train (balanced_train.json, AS-20K), train_full (unbalanced_train.json, AS-2M) or
            eval (eval.json); with ``manifest`` any name (used in messages).
        data_root: folder with the manifests and ``class_labels_indices.csv`` (None: the built-in copy).
        manifest: a json to read instead of the split's (absolute, or relative to ``data_root``).
        options: :class:`~asit.datasets.base.AudioDataset` options.
    """

    stats_name = "audioset"

    def __init__(self, split: str = "train", data_root: str | Path | None = None, *,
                 manifest: str | Path | None = None, **options):
        if manifest is None:
            ensure_split("audioset", split, tuple(MANIFESTS))
        root = resolve_root("audioset", data_root)
        labels_csv = require(root / LABELS_CSV, "audioset", root, f"the class list {LABELS_CSV}", marker=LABELS_CSV)
        classes, mid_index = read_class_labels(labels_csv, root)
        manifest_path = root / (manifest if manifest is not None else MANIFESTS[split])
        require(manifest_path, "audioset", root, f"the manifest of split {split!r}", marker=LABELS_CSV)
        self.manifest = manifest_path
        self._data_root, self._options = data_root, options
        paths, targets = read_manifest(manifest_path, mid_index, root)
        super().__init__(paths, targets, classes, name="audioset", split=split, root=root, multilabel=True, **options)

    def training_split(self) -> AudioDataset:
        """The balanced training set (statistics never see an eval clip)."""
        if self.split in ("train", "train_full"):
            return self
        return AudioSet("train", self._data_root, **self._options)
