"""ESC-50 (Piczak 2015): 2,000 environmental sound clips, 50 classes, 5 s at 44.1 kHz, 5 folds.

Layout, as the GitHub repository ships it (``karolpiczak/ESC-50``, unpacked)::

    <data_root>/audio/1-100032-A-0.wav ...        2,000 clips
    <data_root>/meta/esc50.csv                    filename,fold,target,category,esc10,src_file,take

Protocol: 5-fold cross-validation on the official folds (clips cut from one recording share a
fold). For test fold ``k``, a validation fold is held out of the four training folds, so no epoch
or setting is chosen on the test fold (using the test fold as the validation set would leak):

    test      fold k
    val       fold ``val_fold`` (default: the next fold, k % 5 + 1)
    train     the three other folds
    trainval  train + val (a final fit with settings chosen on val)
    all       every clip
"""

from __future__ import annotations

import csv
from pathlib import Path

from asit.datasets.base import (
    AudioDataset,
    DatasetLayoutError,
    MetadataError,
    ensure_split,
    first_duplicate,
    layout_hint,
    require,
    require_listed_files,
    resolve_root,
)

SPLITS = ("train", "val", "trainval", "test", "all")
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
FOLDS = (1, 2, 3, 4, 5)
NUM_CLASSES = 50  # official targets 0..49


def _parse_row(row: dict, meta: Path, line: int) -> dict:
    """One csv row with ``fold`` and ``target`` as ints, or a :class:`MetadataError` naming the line."""
    if None in row:  # csv.DictReader files surplus fields under the key None
        raise MetadataError("esc50", meta, f"line {line}", f"{len(COLUMNS) + len(row[None])} fields, expected {len(COLUMNS)}")
    if None in row.values():
        raise MetadataError("esc50", meta, f"line {line}", f"{sum(v is not None for v in row.values())} fields, expected {len(COLUMNS)}")
    parsed = dict(row)
    for column, allowed in (("fold", FOLDS), ("target", range(NUM_CLASSES))):
        try:
            parsed[column] = int(row[column])
        except ValueError:
            raise MetadataError("esc50", meta, f"line {line}", f"{column} {row[column]!r} is not a whole number") from None
        if parsed[column] not in allowed:
            raise MetadataError("esc50", meta, f"line {line}",
                                f"{column} {parsed[column]} is not one of ESC-50's {column}s {allowed[0]}..{allowed[-1]}")
    name = row["filename"]
    if not name or Path(name).name != name or name in (".", ".."):
        raise MetadataError("esc50", meta, f"line {line}", f"filename {name!r} is not a file name in audio/")
    return parsed


def check_esc50_rows(rows: list[dict], lines: list[int], meta: Path) -> None:
    """Each clip listed once, one category per target, every class in every fold present.

    A repeated row would put a clip in two splits (train and test); a target in only some folds
    (a typo, an unknown id) would be a class the cross-validation cannot evaluate.
    """
    repeat = first_duplicate((row["filename"], line) for row, line in zip(rows, lines))
    if repeat:
        name, first, again = repeat
        raise MetadataError("esc50", meta, f"line {again}", f"{name} is listed again (first at line {first}): one clip would be in two splits")
    category, folds_of, line_of = {}, {}, {}
    for row, line in zip(rows, lines):
        target = row["target"]
        if category.setdefault(target, row["category"]) != row["category"]:
            raise MetadataError("esc50", meta, f"line {line}", f"target {target} is {row['category']!r} here but "
                                f"{category[target]!r} at line {line_of[target]}")
        folds_of.setdefault(target, set()).add(row["fold"])
        line_of.setdefault(target, line)
    present = {row["fold"] for row in rows}
    for target, folds in sorted(folds_of.items(), key=lambda item: (len(item[1]), item[0])):  # the rarest first
        if folds != present:
            raise MetadataError("esc50", meta, f"line {line_of[target]}",
                                f"class {target} ({category[target]!r}) has clips in fold(s) {sorted(folds)} only, "
                                f"not in every fold {sorted(present)}: a wrong target or fold?")


def read_esc50_meta(root: Path) -> list[dict]:
    """Rows of ``meta/esc50.csv`` with ``fold`` and ``target`` as ints; checks the layout and
    every row (:class:`~asit.datasets.base.MetadataError` names the line of a bad one)."""
    require(root / "audio", "esc50", root, "the clips folder audio/", folder=True, marker="meta/esc50.csv")
    meta = require(root / "meta" / "esc50.csv", "esc50", root, "the metadata file meta/esc50.csv", marker="meta/esc50.csv")
    with open(meta, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetLayoutError(
                "esc50", f"columns {', '.join(COLUMNS)} in {meta}", f"columns {reader.fieldnames}", layout_hint(root, "esc50")
            )
        rows, lines = [], []
        for row in reader:
            rows.append(_parse_row(row, meta, reader.line_num))
            lines.append(reader.line_num)
    if not rows:
        raise DatasetLayoutError("esc50", f"one row per clip in {meta}", "no rows", layout_hint(root, "esc50"))
    check_esc50_rows(rows, lines, meta)
    return rows


class ESC50(AudioDataset):
    """ESC-50 split ``split`` for test fold ``fold`` (see the module docstring for the protocol).

    Args:
        split: train, val, trainval, test or all.
        data_root: the unpacked download (None: the built-in copy).
        fold: the test fold, 1..5.
        val_fold: the held-out validation fold (default: the next fold after ``fold``).
        options: :class:`~asit.datasets.base.AudioDataset` options.
    """

    stats_name = "esc50"

    def __init__(self, split: str = "train", data_root: str | Path | None = None, *, fold: int = 1,
                 val_fold: int | None = None, **options):
        ensure_split("esc50", split, SPLITS)
        root = resolve_root("esc50", data_root)
        rows = read_esc50_meta(root)
        folds = sorted({row["fold"] for row in rows})
        if fold not in folds:
            raise ValueError(f"esc50 has folds {folds}; fold={fold} is not one of them")
        if val_fold is None:
            val_fold = folds[(folds.index(fold) + 1) % len(folds)]
        if val_fold == fold or val_fold not in folds:
            raise ValueError(f"val_fold={val_fold} must be one of {folds} other than the test fold {fold}")
        self.fold, self.val_fold = fold, val_fold
        self._data_root, self._options = data_root, options

        wanted = {
            "test": {fold},
            "val": {val_fold},
            "train": set(folds) - {fold, val_fold},
            "trainval": set(folds) - {fold},
            "all": set(folds),
        }[split]
        # Classes: the categories present, in the order of their official target numbers. With all
        # 50 (the real data set) a class index is the csv's target; a subset (the built-in copy
        # keeps a few categories and their numbers) is renumbered 0..n-1.
        names = dict(sorted({row["target"]: row["category"] for row in rows}.items()))
        index = {target: i for i, target in enumerate(names)}
        chosen = [row for row in rows if row["fold"] in wanted]
        paths = [root / "audio" / row["filename"] for row in chosen]
        require_listed_files(paths, "esc50", root, "meta/esc50.csv")
        targets = [index[row["target"]] for row in chosen]
        super().__init__(paths, targets, list(names.values()), name="esc50", split=split, root=root, **options)

    def stats_key(self) -> str:
        return f"esc50:fold{self.fold}"

    def training_split(self) -> AudioDataset:
        """Every fold but the test fold (statistics never see a test clip; computed ones are only
        needed off the real data, whose statistics are published)."""
        if self.split == "trainval":
            return self
        return ESC50("trainval", self._data_root, fold=self.fold, val_fold=self.val_fold, **self._options)

