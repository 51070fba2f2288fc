"""What every data set shares: the item contract, crops and views, skipping bad files, statistics.

A loader (``esc50.py``, ``speech_commands.py``, ...) only reads its publisher's layout into a list
of files and targets and hands them to :class:`AudioDataset`, which does the rest:

    file -> asit.audio.load_audio (mono, resampled) -> prepare_wave (mean removed, whole clip)
         -> [roll in time] -> crop / zero-pad to samples_for_frames(num_frames) -> item

Data workers stop at the waveform; :class:`asit.features.FbankFrontend` turns a batch into
spectrograms on the training device. Crops start on a multiple of the 10 ms hop, so the frames
of a crop are exactly frames of the whole clip's per-clip reference fbank.

Bad files never reach a model (the released ASiT code returns ``None`` and breaks collation):
a fast header check at construction drops empty, truncated, non-audio, unreadable, too short and
too long files; a problem found only when decoding (NaN or absurd samples) is recorded and the
next good item is returned instead (training), or the item is marked ``valid=False`` so that an
evaluation scores each good clip exactly once (``replace_bad=False``). Every skip is logged by name on the ``asit.data`` logger and counted in
the data set's :class:`SkipLog`; each item carries the skips found while producing it, and
:func:`collate_clips` gathers them per batch, so an engine can total skips found in worker
processes too.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, get_worker_info

from asit import audio
from asit.audio import (
    DATASET_STATS,
    DEFAULT_SAMPLE_RATE,
    MAX_SECONDS,
    MIN_SECONDS,
    AudioError,
    NormStats,
    check_fbank,
    compute_norm_stats,
    display_path,
    hop_length,
    kaldi_fbank,
    load_audio,
    prepare_wave,
    samples_for_frames,
)

log = logging.getLogger("asit.data")

DATA_README = "data/README.md"
STATS_CACHE_NAME = ".asit_norm_stats.json"  # written next to the data, keyed by data set and sample rate
STATS_MAX_CLIPS = 2000  # clips (evenly spaced over the training split) behind computed statistics


# --------------------------------------------------------------------------------------------
# Errors


class DatasetLayoutError(FileNotFoundError):
    """The folder given as ``data_root`` is not the publisher's layout (or is incomplete).

    The message says what was expected where, what was found there, and how to get the data.
    """

    def __init__(self, dataset: str, expected: str | Path, found: str, hint: str):
        self.dataset, self.expected, self.found, self.hint = dataset, str(expected), found, hint
        super().__init__(f"{dataset}: expected {expected}\n  found: {found}\n  {hint}")

    def __reduce__(self):
        return (type(self), (self.dataset, self.expected, self.found, self.hint))


class MetadataError(DatasetLayoutError):
    """A malformed or inconsistent entry of a data set's metadata file (a csv row, a list line, a
    json entry). The message is one line: data set, file, line (or entry) and what is wrong."""

    def __init__(self, dataset: str, path: str | Path, where: str | None, problem: str):
        self.dataset, self.path, self.where, self.problem = dataset, str(path), where, problem
        self.expected, self.found, self.hint = self.path, problem, ""
        location = display_path(path) + (f", {where}" if where else "")
        OSError.__init__(self, f"{dataset}: {location}: {problem}")

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return (type(self), (self.dataset, self.path, self.where, self.problem))


def read_text_lines(path: Path) -> list[str]:
    """Lines of a metadata text file. Bytes that are not UTF-8 (a file name in another encoding)
    are kept as Python keeps such names (``surrogateescape``), so the name still opens the file."""
    return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()


def first_duplicate(keys: Iterable[tuple[str, int]]) -> tuple[str, int, int] | None:
    """The first ``(key, first_line, repeat_line)`` of a key seen twice in ``(key, line)`` pairs."""
    seen: dict[str, int] = {}
    for key, line in keys:
        if key in seen:
            return key, seen[key], line
        seen[key] = line
    return None


class NoUsableAudioError(RuntimeError):
    """Every file of a split was skipped as bad: nothing is left to train or evaluate on."""


def describe_folder(path: Path, limit: int = 8) -> str:
    """What is at ``path``, for error messages: 'missing', or its first entries."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not entries:
        return f"{path} is empty"
    more = f" ... ({len(entries)} entries)" if len(entries) > limit else ""
    return f"{path} holds {', '.join(entries[:limit])}{more}"


def layout_hint(root: Path, dataset: str, marker: str | None = None) -> str:
    """How to get the data: ``make data`` for the built-in copy, else the README / download helper.

    ``marker``: a file the layout must contain; when it sits one folder further down, the hint
    names that folder (pointing at the parent of the unpacked download is the common mistake).
    """
    from asit.datasets import builtin_root  # late: __init__ imports this module

    try:
        builtin = builtin_root(dataset)
    except KeyError:
        builtin = None
    if builtin is not None and Path(root).resolve() == builtin.resolve():
        return "the built-in data is missing or incomplete: run `make data` (or `python -m asit.datasets.builtin`)"
    hint = f"see {DATA_README} for how to obtain {dataset} and the layout its loader reads"
    if dataset in ("esc50", "speech_commands_v1", "speech_commands_v2"):
        hint += f", or download it with `python -m asit.datasets.download {dataset} --root DIR`"
    if marker is not None and Path(root).is_dir():
        nested = sorted(p.parent for p in Path(root).glob(f"*/{marker}"))
        if nested:
            hint = f"did you mean data_root={str(nested[0])!r}? ({marker} is there); " + hint
    return hint


def resolve_root(dataset: str, data_root: str | Path | None) -> Path:
    """``data_root``, or the built-in copy's folder when None."""
    if data_root is None:
        from asit.datasets import builtin_root

        return builtin_root(dataset)
    return Path(data_root).expanduser()


def require(path: Path, dataset: str, root: Path, what: str, *, folder: bool = False, marker: str | None = None) -> Path:
    """``path`` must be a file (a folder with ``folder=True``), else a :class:`DatasetLayoutError`."""
    if path.is_dir() if folder else path.is_file():
        return path
    found = describe_folder(path.parent if path.parent.exists() and path.parent != root else root)
    raise DatasetLayoutError(dataset, f"{what} at {path}", found, layout_hint(root, dataset, marker))


def require_listed_files(paths: Sequence[Path], dataset: str, root: Path, listed_in: str) -> None:
    """Every file a list names must be there: a partial download fails here, not mid-epoch."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        first = ", ".join(str(p) for p in missing[:3])
        raise DatasetLayoutError(
            dataset,
            f"the {len(paths)} files that {listed_in} lists",
            f"{len(missing)} of them missing, e.g. {first}",
            "the download looks incomplete; " + layout_hint(root, dataset),
        )


# --------------------------------------------------------------------------------------------
# Skips


def problem_kind(problem: str) -> str:
    """Short category of an :class:`asit.audio.AudioError` problem, for counts."""
    kinds = (
        ("does not exist", "missing"),
        ("permission denied", "unreadable"),
        ("cannot be opened", "unreadable"),
        ("is a directory", "not a file"),
        ("broken symbolic link", "broken link"),
        ("empty", "empty"),
        ("no samples", "empty"),
        ("truncated", "truncated"),
        ("not a readable audio file", "not audio"),
        ("cannot be decoded", "corrupt"),
        ("filterbank with", "NaN/inf fbank"),
        ("NaN", "NaN/inf samples"),
        ("absurd sample values", "absurd samples"),
        ("too short", "too short"),
        ("too long", "too long"),
    )
    for needle, kind in kinds:
        if needle in problem:
            return kind
    return "other"


class SkipLog:
    """The files a data set skipped, each once: ``(path, problem)`` records, counts by kind.

    ``add`` logs a warning naming the file on the ``asit.data`` logger. Engines merge the
    ``skipped`` lists of their batches with ``extend`` (found in worker processes, already logged
    there) and print :meth:`summary` at the end of an epoch.
    """

    def __init__(self, records: Iterable[tuple[str, str]] = ()):
        self.records: list[tuple[str, str]] = []
        self._paths: set[str] = set()
        self.extend(records)

    def add(self, path: str | Path, problem: str, *, warn: bool = True) -> bool:
        """Record a skipped file; False if it was already recorded."""
        path = str(path)
        if path in self._paths:
            return False
        self._paths.add(path)
        self.records.append((path, problem))
        if warn:
            log.warning("skipping %s: %s", display_path(path), problem)
        return True

    def extend(self, records: Iterable[tuple[str, str]]) -> int:
        """Merge records (e.g. a batch's ``skipped``) without logging again; returns how many were new."""
        return sum(self.add(path, problem, warn=False) for path, problem in records)

    @property
    def counts(self) -> Counter:
        """Skipped files per kind of problem (``problem_kind``)."""
        return Counter(problem_kind(problem) for _, problem in self.records)

    def summary(self) -> str:
        """One line, e.g. ``'skipped 3 files: 2 empty, 1 truncated'``."""
        if not self.records:
            return "skipped no files"
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.counts.most_common())
        return f"skipped {len(self.records)} file{'s' if len(self.records) != 1 else ''}: {kinds}"

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __contains__(self, path) -> bool:
        return str(path) in self._paths

    def __repr__(self) -> str:
        return f"SkipLog({self.summary()})"


def skipped_by_split(logs: dict[str, Iterable[tuple[str, str]]]) -> dict:
    """Bad files totalled per split, for a result JSON: ``{"total": N, "by_split": {split: n},
    "kinds": {split: {kind: n}}, "files": {split: [[path, problem], ...]}}``.

    A file is counted once per split it belongs to; paths are printable (:func:`display_path`).
    """
    per_split = {split: SkipLog(records) for split, records in logs.items()}
    distinct = {path for log in per_split.values() for path, _ in log}
    return {
        "total": len(distinct),
        "by_split": {split: len(log) for split, log in per_split.items()},
        "kinds": {split: dict(log.counts) for split, log in per_split.items()},
        "files": {split: [[display_path(path), problem] for path, problem in log] for split, log in per_split.items()},
    }


def check_audio_header(
    path: str | Path, min_seconds: float = MIN_SECONDS, max_seconds: float | None = MAX_SECONDS
) -> float:
    """:func:`asit.audio.check_audio` (the header-only checks of ``load_audio``); returns the duration (s)."""
    return audio.check_audio(path, min_seconds=min_seconds, max_seconds=max_seconds)


# --------------------------------------------------------------------------------------------
# The data set


class AudioDataset(Dataset):
    """Clips (files, or segments of files) with targets, served as the data contract's items.

    Loaders subclass it; :func:`asit.datasets.get_dataset` is the usual way in.

    Args:
        paths: one audio file per clip.
        targets: per clip, a class index (single-label), a tuple of class indices (``multilabel``)
            or -1 (unlabelled).
        classes: class names; ``targets`` index into it.
        name, split: for messages, ``repr`` and the statistics cache.
        root: the data set's folder (``data_root``); computed statistics are cached there.
        segments: ``{clip index: (offset_s, duration_s)}`` for clips cut from a longer file
            (Speech Commands' ``_silence_``); other clips are whole files.
        sample_rate: rate the waveforms are resampled to.
        num_frames: crop / zero-pad every clip to ``samples_for_frames(num_frames)`` samples;
            None returns whole clips (variable length; :func:`collate_clips` pads them).
        random_crop: a random crop start (training); False crops from the start (evaluation, as AST).
        roll_prob: probability of a random circular roll in time before cropping (ASiT's
            pretraining views use 0.5).
        num_views: V > 1 returns V independent rolls / crops of the same clip: ``wave`` (V, S).
        roll_once: roll the clip once and cut all V crops from that roll (the released ASiT code)
            instead of rolling each view on its own.
        max_seconds: longer files are skipped (passed to ``load_audio``).
        check_files: read every header at construction and drop bad files up front.
        seed: mixed into the random generator (see :meth:`generator`).
        stats: normalisation statistics to use instead of the published / computed ones.
        skipped: a :class:`SkipLog` already holding the loader's own skips (e.g. noise files).
        replace_bad: a clip found bad when decoding is replaced by the next good one (training:
            every batch stays full). False (evaluation): its item is served with ``valid=False``
            (silent wave, length 0) so that an engine drops it and scores each good clip once.
    """

    stats_name: str | None = None  # key into asit.audio.DATASET_STATS when the statistics are published

    def __init__(
        self,
        paths: Sequence[str | Path],
        targets: Sequence,
        classes: Sequence[str],
        *,
        name: str,
        split: str,
        root: str | Path | None = None,
        multilabel: bool = False,
        segments: dict[int, tuple[float, float]] | None = None,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        num_frames: int | None = None,
        random_crop: bool = False,
        roll_prob: float = 0.0,
        num_views: int = 1,
        roll_once: bool = False,
        max_seconds: float | None = MAX_SECONDS,
        check_files: bool = True,
        seed: int | None = None,
        stats: NormStats | None = None,
        skipped: SkipLog | None = None,
        replace_bad: bool = True,
    ):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if not 0.0 <= roll_prob <= 1.0:
            raise ValueError(f"roll_prob must be in [0, 1], got {roll_prob}")
        self.name, self.split = name, split
        self.root = Path(root) if root is not None else None
        self.classes = list(classes)
        self.multilabel = multilabel
        self.sample_rate = sample_rate
        self.num_frames = num_frames
        self.random_crop = random_crop
        self.roll_prob = roll_prob
        self.num_views = num_views
        self.roll_once = roll_once
        self.max_seconds = max_seconds
        self.seed = seed
        self.replace_bad = replace_bad
        self.skipped = skipped if skipped is not None else SkipLog()
        self._stats = stats
        self.paths = [str(p) for p in paths]
        self.targets = list(targets)
        self.segments = dict(segments or {})
        if not self.paths:
            raise DatasetLayoutError(name, f"at least one clip in split {split!r}", "0 clips", f"check the split name and {DATA_README}")
        if check_files:
            self._drop_bad_files()
        self._bad: set[int] = set()  # indices found bad when decoding, in this process
        self._rng: torch.Generator | None = None
        self._rng_key = None
        self._sources: dict[str, torch.Tensor] = {}  # decoded long files that segments are cut from

    # ---- construction ------------------------------------------------------------------------

    def _drop_bad_files(self) -> None:
        """Header check of every distinct file; drop the clips of bad ones (recorded in ``skipped``)."""
        segment_sources = {self.paths[i] for i in self.segments}
        bad: set[str] = set()
        for path in dict.fromkeys(self.paths):  # distinct, in order
            # A long file that segments are cut from is not held to max_seconds: the segments are.
            max_seconds = None if path in segment_sources else self.max_seconds
            try:
                check_audio_header(path, MIN_SECONDS, max_seconds)
            except AudioError as err:
                bad.add(path)
                self.skipped.add(err.path, err.problem)
        if not bad:
            return
        keep = [i for i, p in enumerate(self.paths) if p not in bad]
        if not keep:
            raise NoUsableAudioError(
                f"{self.name} split {self.split!r}: every one of its {len(self.paths)} clips is a bad file "
                f"({self.skipped.summary()}); the first: {self.skipped.records[0][0]}: {self.skipped.records[0][1]}"
            )
        new_index = {old: new for new, old in enumerate(keep)}
        self.segments = {new_index[i]: seg for i, seg in self.segments.items() if i in new_index}
        self.paths = [self.paths[i] for i in keep]
        self.targets = [self.targets[i] for i in keep]

    # ---- basic attributes --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_samples(self) -> int | None:
        """Samples per crop (None: whole clips)."""
        return None if self.num_frames is None else samples_for_frames(self.num_frames, self.sample_rate)

    def __repr__(self) -> str:
        kind = "multi-label, " if self.multilabel else ""
        return (
            f"{type(self).__name__}(split={self.split!r}, {len(self)} clips, {kind}{self.num_classes} classes, "
            f"sample_rate={self.sample_rate}, num_frames={self.num_frames}, root={str(self.root) if self.root else None!r})"
        )

    def __getstate__(self):  # workers started by 'spawn' get no generator or decoded sources
        state = self.__dict__.copy()
        state.update(_rng=None, _rng_key=None, _sources={})
        return state

    # ---- randomness --------------------------------------------------------------------------

    def generator(self) -> torch.Generator:
        """This process's random generator for rolls and crops.

        In a DataLoader worker it is seeded from the worker's seed, which PyTorch draws afresh
        each epoch (from the DataLoader's ``generator``, or torch's global RNG) and offsets by the
        worker id: crops differ per worker and per epoch, and repeat when that is seeded. In the
        main process it is seeded from ``seed``, or else drawn from torch's global RNG (so
        :func:`asit.session.seed_everything` makes it reproducible). ``seed`` is mixed in either way.
        """
        info = get_worker_info()
        key = (os.getpid(), info.seed if info is not None else None)
        if self._rng is None or self._rng_key != key:
            if info is not None:
                seed = info.seed + 1_000_003 * (self.seed or 0)
            elif self.seed is not None:
                seed = self.seed
            else:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            self._rng = torch.Generator().manual_seed(seed % 2**63)
            self._rng_key = key
        return self._rng

    def _randint(self, high: int) -> int:
        """Uniform integer in [0, high)."""
        return int(torch.randint(0, high, (1,), generator=self.generator()).item())

    # ---- items -------------------------------------------------------------------------------

    def load_clip(self, index: int) -> torch.Tensor:
        """Whole clip ``index``: mono, resampled, mean-removed, ``(L,)``. Raises ``AudioError``."""
        path = self.paths[index]
        if index not in self.segments:
            return prepare_wave(load_audio(path, self.sample_rate, max_seconds=self.max_seconds))
        offset, duration = self.segments[index]
        if path not in self._sources:
            self._sources[path] = load_audio(path, self.sample_rate, max_seconds=None)
        start = int(round(offset * self.sample_rate))
        wave = self._sources[path][start : start + int(round(duration * self.sample_rate))]
        if wave.numel() < samples_for_frames(1, self.sample_rate):
            raise AudioError(path, f"segment at {offset:.2f} s is shorter than one fbank window")
        return prepare_wave(wave)

    def target(self, index: int) -> torch.Tensor:
        """int64 class index (-1: unlabelled), or float multi-hot ``(C,)`` for a multi-label set."""
        target = self.targets[index]
        if self.multilabel:
            multi_hot = torch.zeros(self.num_classes, dtype=torch.float32)
            multi_hot[list(target)] = 1.0
            return multi_hot
        return torch.tensor(target, dtype=torch.int64)

    def _roll(self, wave: torch.Tensor) -> torch.Tensor:
        """With probability ``roll_prob``, a circular roll of the whole clip by a random number of hops."""
        hop, total = hop_length(self.sample_rate), wave.numel()
        if self.roll_prob > 0 and torch.rand((), generator=self.generator()).item() < self.roll_prob:
            # Whole hops, so frames away from the seam stay on the clip's frame grid.
            wave = torch.roll(wave, hop * (self._randint(2 * (total // hop) + 1) - total // hop))
        return wave

    def _view(self, wave: torch.Tensor, roll: bool = True) -> tuple[torch.Tensor, int]:
        """One roll / crop of a whole clip: ``(S,)`` and its valid length."""
        hop = hop_length(self.sample_rate)
        total = wave.numel()
        if roll:
            wave = self._roll(wave)
        size = self.num_samples
        if size is None:
            return wave, total
        if total <= size:
            return torch.nn.functional.pad(wave, (0, size - total)), total
        start = hop * self._randint((total - size) // hop + 1) if self.random_crop else 0
        return wave[start : start + size], size

    def _next_good(self, index: int) -> tuple[int, torch.Tensor, list[tuple[str, str]]]:
        """Clip ``index``, or the next one that decodes; records the bad ones on the way."""
        found: list[tuple[str, str]] = []
        for step in range(len(self)):
            i = (index + step) % len(self)
            if i in self._bad:
                continue
            try:
                return i, self.load_clip(i), found
            except AudioError as err:
                self._bad.add(i)
                if self.skipped.add(err.path, err.problem):
                    found.append((err.path, err.problem))
        raise NoUsableAudioError(
            f"{self.name} split {self.split!r}: no clip could be decoded ({self.skipped.summary()})"
        )

    def _load_or_mark(self, index: int) -> tuple[torch.Tensor | None, list[tuple[str, str]]]:
        """Clip ``index``, or None when it is bad (``replace_bad=False``: no neighbour stands in)."""
        if index in self._bad:
            return None, []
        try:
            return self.load_clip(index), []
        except AudioError as err:
            self._bad.add(index)
            return None, [(err.path, err.problem)] if self.skipped.add(err.path, err.problem) else []

    def __getitem__(self, index: int) -> dict:
        """Item of the data contract.

        Returns:
            ``wave`` float32 ``(S,)`` or ``(V, S)``; ``length`` valid samples (int, or ``(V,)``);
            ``target``; ``index`` of the clip served (the next good one when ``index`` is a bad
            file); ``skipped``: ``(path, problem)`` of bad files found while producing it;
            ``valid``: False for a bad clip served as a placeholder (``replace_bad=False``).
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        if self.replace_bad:
            i, wave, found = self._next_good(index)
        else:
            i, (wave, found) = index, self._load_or_mark(index)
            if wave is None:
                return self._placeholder(i, found)
        if self.roll_once:  # one roll, then every crop from it
            wave = self._roll(wave)
        views = [self._view(wave, roll=not self.roll_once) for _ in range(self.num_views)]
        if self.num_views == 1:
            wave_out, length = views[0]
        else:
            wave_out = torch.stack([v for v, _ in views])  # (V, S); whole clips share their length
            length = torch.tensor([n for _, n in views], dtype=torch.int64)
        return {
            "wave": wave_out.float().contiguous(),
            "length": length,
            "target": self.target(i),
            "index": i,
            "skipped": found,
            "valid": True,
        }

    def _placeholder(self, index: int, found: list[tuple[str, str]]) -> dict:
        """The item of a bad clip in evaluation: silence of length 0, ``valid=False``."""
        size = self.num_samples or audio.window_length(self.sample_rate)
        shape = (size,) if self.num_views == 1 else (self.num_views, size)
        length = 0 if self.num_views == 1 else torch.zeros(self.num_views, dtype=torch.int64)
        return {"wave": torch.zeros(shape), "length": length, "target": self.target(index), "index": index,
                "skipped": found, "valid": False}

    # ---- statistics and sampling -------------------------------------------------------------

    def training_split(self) -> "AudioDataset":
        """The split statistics are computed over (loaders override; here: the data set itself)."""
        return self

    def stats_key(self) -> str:
        """Key of this data set's computed statistics in the cache file."""
        return self.name

    def stats_cache_file(self) -> Path | None:
        return self.root / STATS_CACHE_NAME if self.root is not None else None

    @property
    def is_builtin(self) -> bool:
        """Read from the built-in synthetic copy (``<data_dir>/builtin``), not from the real data."""
        if self.root is None:
            return False
        from asit.session import data_dir

        builtin, root = (data_dir() / "builtin").resolve(), self.root.resolve()
        return root == builtin or builtin in root.parents

    @property
    def stats(self) -> NormStats:
        """Normalisation statistics: given, published (``DATASET_STATS``), or computed over the
        training split (at most ``STATS_MAX_CLIPS`` clips) and cached in ``<root>/.asit_norm_stats.json``.

        The built-in copies compute their own: the published figures describe the real recordings,
        and synthetic clips normalised with them come out about a third narrower than the
        pretraining pool's (whose statistics are computed), which a pretrained encoder pays for.
        """
        if self._stats is None:
            if self.stats_name in DATASET_STATS and not self.is_builtin:
                self._stats = DATASET_STATS[self.stats_name]
            else:
                self._stats = self._cached_or_computed_stats()
        return self._stats

    def _cached_or_computed_stats(self) -> NormStats:
        key = f"{self.stats_key()}@{self.sample_rate}"
        cache = self.stats_cache_file()
        table = {}
        if cache is not None and cache.is_file():
            try:
                table = json.loads(cache.read_text())
            except (OSError, ValueError):
                table = {}
            if key in table:
                return NormStats(float(table[key]["mean"]), float(table[key]["std"]))
        train = self.training_split()
        log.info("computing normalisation statistics of %s over %d clips of its training split", key, min(len(train), STATS_MAX_CLIPS))
        stats = compute_dataset_stats(train, max_clips=STATS_MAX_CLIPS)
        if cache is not None:
            table[key] = {"mean": stats.mean, "std": stats.std, "clips": min(len(train), STATS_MAX_CLIPS)}
            tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
                tmp.replace(cache)  # atomic: a reader never sees half a file
            except OSError as err:  # a read-only data folder: compute again next time
                log.info("could not cache statistics in %s (%s)", cache, err)
                tmp.unlink(missing_ok=True)
        return stats

    def sample_weights(self) -> torch.Tensor:
        """Per-clip weights for ``torch.utils.data.WeightedRandomSampler``: ``(N,)`` float64.

        Multi-label (AudioSet, AST's balanced sampling of the 2M set): a clip's weight is the sum
        over its labels of 1 / (clips carrying that label), so rare classes are drawn as often as
        common ones. Single-label: 1 / (clips of its class). Unlabelled: all ones.
        """
        if self.multilabel:
            counts = np.zeros(self.num_classes)
            for labels in self.targets:
                counts[list(labels)] += 1
            inverse = 1.0 / np.maximum(counts, 1)
            weights = [inverse[list(labels)].sum() for labels in self.targets]
        else:
            counts = Counter(self.targets)
            weights = [1.0 if t == -1 else 1.0 / counts[t] for t in self.targets]
        return torch.tensor(weights, dtype=torch.float64)


def compute_dataset_stats(dataset: AudioDataset, max_clips: int | None = None) -> NormStats:
    """Mean and std of the unnormalised log-mel pixels of a data set's whole clips.

    Uses ``max_clips`` clips evenly spaced over the data set (None: all), each whole (no crop, no
    zero-padded frames); bad files are skipped as in training, and so is a file whose fbank holds
    NaN or infinite values (one such file would make the statistics NaN and every input with them).
    """
    count = len(dataset) if max_clips is None else min(len(dataset), max_clips)
    picks = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))

    def fbanks():
        for index in picks:
            while True:
                i, wave, _ = dataset._next_good(int(index))
                try:
                    yield check_fbank(kaldi_fbank(wave, dataset.sample_rate), dataset.paths[i])
                    break
                except AudioError as err:  # marked bad: _next_good moves on to the next clip
                    dataset._bad.add(i)
                    dataset.skipped.add(err.path, err.problem)

    return compute_norm_stats(fbanks())


def collate_clips(batch: list[dict]) -> dict:
    """Stack items into a batch; zero-pad whole clips of different lengths.

    Returns:
        ``wave`` ``(B, S)`` or ``(B, V, S)``; ``length`` ``(B,)`` or ``(B, V)``; ``target``
        ``(B,)`` int64 or ``(B, C)`` float; ``index`` ``(B,)``; ``skipped``: every item's
        ``(path, problem)`` records, concatenated (found in the worker that built the batch);
        ``valid`` ``(B,)`` bool: False for the placeholder of a bad clip (``replace_bad=False``).
        Items of :class:`asit.fbank_cache.CachedFbankDataset` give ``fbank`` ``(B, T, F)`` (whole
        clips zero-padded to the longest) and ``frames`` in place of ``wave`` and ``length``.
    """
    common = {
        "target": torch.stack([item["target"] for item in batch]),
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.int64),
        "skipped": [record for item in batch for record in item.get("skipped", [])],
        "valid": torch.tensor([bool(item.get("valid", True)) for item in batch]),
    }
    if "fbank" in batch[0]:
        fbanks = [item["fbank"] for item in batch]
        longest = max(f.shape[-2] for f in fbanks)
        fbanks = [torch.nn.functional.pad(f, (0, 0, 0, longest - f.shape[-2])) for f in fbanks]
        return {
            "fbank": torch.stack(fbanks),
            "frames": torch.stack([torch.as_tensor(item["frames"], dtype=torch.int64) for item in batch]),
            **common,
        }
    waves = [item["wave"] for item in batch]
    longest = max(w.shape[-1] for w in waves)
    waves = [torch.nn.functional.pad(w, (0, longest - w.shape[-1])) for w in waves]
    return {
        "wave": torch.stack(waves),
        "length": torch.stack([torch.as_tensor(item["length"], dtype=torch.int64) for item in batch]),
        **common,
    }


def good_rows(batch: dict) -> dict:
    """The batch without the placeholders of bad clips (``valid`` False, see ``replace_bad``):
    every per-clip tensor keeps the valid rows only; ``skipped`` is kept whole."""
    valid = batch.get("valid")
    if valid is None or bool(valid.all()):
        return batch
    return {key: value[valid] if torch.is_tensor(value) and value.dim() > 0 and len(value) == len(valid) else value
            for key, value in batch.items()}


def stack_datasets(
    datasets: Sequence[AudioDataset], *, name: str, split: str, root: Path | None = None, **options
) -> AudioDataset:
    """One unlabelled data set over the clips of several (labels dropped, skip logs merged)."""
    paths, segments, skipped = [], {}, SkipLog()
    for dataset in datasets:
        segments.update({len(paths) + i: seg for i, seg in dataset.segments.items()})
        paths += dataset.paths
        skipped.extend(dataset.skipped)
    options.setdefault("check_files", False)  # every part was checked when it was built
    return AudioDataset(paths, [-1] * len(paths), [], name=name, split=split, root=root, skipped=skipped, **options)


def ensure_split(dataset: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset} has no split {split!r}; choose one of {', '.join(allowed)}")


def base_dataset(dataset):
    """The :class:`AudioDataset` under any ``torch.utils.data.Subset`` wrapping."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


__all__ = [
    "base_dataset",
    "AudioDataset",
    "DatasetLayoutError",
    "MetadataError",
    "NoUsableAudioError",
    "SkipLog",
    "check_audio_header",
    "collate_clips",
    "compute_dataset_stats",
    "good_rows",
    "problem_kind",
    "skipped_by_split",
]
