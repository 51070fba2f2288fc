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
    MetadataError,
    ensure_split,
    layout_hint,
    require,
    resolve_root,
)

MANIFESTS = {"train": "balanced_train.json", "train_full": "unbalanced_train.json", "eval": "eval.json"}
LABELS_CSV = "class_labels_indices.csv"


def read_class_labels(path: Path, root: Path) -> tuple[list[str], dict[str, int]]:
    """Display names ordered by index, and ``mid -> index``, from ``class_labels_indices.csv``."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        if not {"index", "mid", "display_name"} <= set(reader.fieldnames or []):
            raise DatasetLayoutError("audioset", f"columns index,mid,display_name in {path}",
                                     f"columns {reader.fieldnames}", layout_hint(root, "audioset"))
        rows, mid_line = [], {}
        for row in reader:
            where = f"line {reader.line_num}"
            if None in row.values() or not row["mid"]:
                raise MetadataError("audioset", path, where, "a short row: expected index,mid,display_name")
            try:
                index = int(row["index"])
            except ValueError:
                raise MetadataError("audioset", path, where, f"index {row['index']!r} is not a whole number") from None
            if row["mid"] in mid_line:
                raise MetadataError("audioset", path, where, f"mid {row['mid']} is listed again (first at line {mid_line[row['mid']]})")
            mid_line[row["mid"]] = reader.line_num
            rows.append((index, row["mid"], row["display_name"]))
    rows.sort()
    if [i for i, _, _ in rows] != list(range(len(rows))):
        raise DatasetLayoutError("audioset", f"indices 0..N-1 in {path}", "gaps or repeats", layout_hint(root, "audioset"))
    return [name for _, _, name in rows], {mid: i for i, mid, _ in rows}


def _entry_problem(entry, mid_index: dict[str, int]) -> str | None:
    """What is wrong with one manifest entry (None: nothing)."""
    if not isinstance(entry, dict):
        return f"{entry!r} is not an object with 'wav' and 'labels'"
    if not isinstance(entry.get("wav"), str) or not entry["wav"]:
        return f"'wav' is {entry.get('wav')!r}, not a file path"
    if not isinstance(entry.get("labels"), str):
        return f"'labels' is {entry.get('labels')!r}, not a comma-separated string of mids"
    mids = [m.strip() for m in entry["labels"].split(",") if m.strip()]
    unknown = [m for m in mids if m not in mid_index]
    if unknown:
        return f"labels {unknown} not in {LABELS_CSV}"
    return None if mids else "no labels"


def read_manifest(path: Path, mid_index: dict[str, int], root: Path) -> tuple[list[Path], list[tuple[int, ...]]]:
    """Paths (resolved against the json's folder) and label-index tuples of an AST json manifest.

    A malformed entry, or a clip listed twice, is a :class:`~asit.datasets.base.MetadataError`
    naming the entry (numbered from 0 in ``"data"``).
    """
    try:
        entries = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))["data"]
        if not isinstance(entries, list):
            raise TypeError(f"'data' is a {type(entries).__name__}, not a list")
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetLayoutError("audioset", f'an AST manifest {{"data": [{{"wav": ..., "labels": ...}}]}} in {path}',
                                 f"unreadable ({err!r})", layout_hint(root, "audioset")) from None
    paths, targets, first_entry = [], [], {}
    for number, entry in enumerate(entries):
        problem = _entry_problem(entry, mid_index)
        if problem is None and entry["wav"] in first_entry:
            problem = f"{entry['wav']} is listed again (first at entry {first_entry[entry['wav']]})"
        if problem:
            raise MetadataError("audioset", path, f"entry {number}", problem)
        first_entry[entry["wav"]] = number
        paths.append(path.parent / entry["wav"])  # an absolute 'wav' stays as it is
        targets.append(tuple(sorted({mid_index[m.strip()] for m in entry["labels"].split(",") if m.strip()})))
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
