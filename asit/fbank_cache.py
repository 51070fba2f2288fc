"""Optional on-disk cache of filterbanks, for many epochs over a small data set.

Without it, every epoch decodes and resamples every clip in the data workers. With it, the
whole-clip Kaldi fbank of every clip is computed once (the reference path, :func:`asit.audio.kaldi_fbank`)
and stored as float16 in one memory-mapped file; later epochs cut their crops straight out of it.
Worth it when the same few thousand clips are read for dozens of epochs (ESC-50's 5 x 2,000 clips,
a laptop run on the built-in data); not for AudioSet-2M, which would not fit.

    cache = FbankCache.build(dataset, "results/cache/esc50-fold1-train")
    cached = CachedFbankDataset(dataset, cache)        # same options as ``dataset``: crop, roll, views
    loader = DataLoader(cached, batch_size=32, collate_fn=collate_clips)
    spec = spectrograms(batch, frontend)               # (B, 1, T, F), from waves or cached fbanks

The cache is keyed by a fingerprint of the files (path, size, modification time) and the fbank
settings; a changed data set or setting rebuilds it instead of serving stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from asit.atomic import atomic_write
from asit.audio import NUM_MEL_BINS, AudioError, check_fbank, hop_length, kaldi_fbank, window_length
from asit.features import FbankFrontend

CACHE_VERSION = 1


def _fingerprint(dataset) -> str:
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_VERSION} sr={dataset.sample_rate} mel={NUM_MEL_BINS}".encode())
    for index, path in enumerate(dataset.paths):
        stat = os.stat(path)
        segment = dataset.segments.get(index) if getattr(dataset, "segments", None) else None
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{segment}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


@dataclass
class FbankCache:
    """Whole-clip fbanks of one data set: ``frames[i]`` rows starting at ``offsets[i]`` in ``values``."""

    directory: Path
    offsets: np.ndarray  # (N,) int64 first row of each clip; -1 for a clip that failed to load
    frames: np.ndarray  # (N,) int64 frame count of each clip
    fingerprint: str
    problems: dict[int, str] | None = None  # clip -> why it failed to load (offset -1)

    def problem(self, index: int) -> str:
        return (self.problems or {}).get(int(index), "failed to load when the fbank cache was built")

    @property
    def values(self) -> np.ndarray:
        """``(total_frames, F)`` float16, memory-mapped (cheap to open in every worker)."""
        return np.load(self.directory / "fbank.npy", mmap_mode="r")

    @classmethod
    def build(cls, dataset, directory: str | Path, progress: bool = True) -> "FbankCache":
        """Compute (or reuse, if the fingerprint matches) the cache of ``dataset`` in ``directory``."""
        directory = Path(directory)
        fingerprint = _fingerprint(dataset)
        index_file = directory / "index.json"
        if index_file.exists():
            index = json.loads(index_file.read_text())
            if index.get("fingerprint") == fingerprint and (directory / "fbank.npy").exists():
                cache = cls(directory, np.asarray(index["offsets"]), np.asarray(index["frames"]), fingerprint,
                            {int(k): v for k, v in index.get("problems", {}).items()})
                for i in np.flatnonzero(cache.offsets < 0):  # a reused cache still counts its bad clips
                    dataset.skipped.add(dataset.paths[i], cache.problem(i))
                return cache
        directory.mkdir(parents=True, exist_ok=True)
        fbanks, offsets, frames, problems, total = [], [], [], {}, 0
        iterator = range(len(dataset))
        if progress:
            iterator = tqdm(iterator, desc=f"caching fbanks of {getattr(dataset, 'name', 'dataset')}", leave=False)
        for i in iterator:
            try:
                fbank = check_fbank(kaldi_fbank(dataset.load_clip(i), dataset.sample_rate), dataset.paths[i])  # (T, F)
            except AudioError as err:  # counted like any other bad file; see CachedFbankDataset for its item
                dataset.skipped.add(err.path, err.problem)
                problems[i] = err.problem
                offsets.append(-1)
                frames.append(0)
                continue
            fbanks.append(fbank.numpy().astype(np.float16))
            offsets.append(total)
            frames.append(fbank.shape[0])
            total += fbank.shape[0]
        if not fbanks:
            raise RuntimeError(f"no clip of {getattr(dataset, 'name', 'the data set')} could be cached")
        values = np.concatenate(fbanks)
        with atomic_write(directory / "fbank.npy") as handle:
            np.save(handle, values)
        # The index is written last: a half-built cache never looks whole.
        index = {"fingerprint": fingerprint, "offsets": offsets, "frames": frames, "clips": len(offsets), "rows": total,
                 "problems": {str(i): problem for i, problem in problems.items()}}
        with atomic_write(index_file, "w") as handle:
            handle.write(json.dumps(index))
        return cls(directory, np.asarray(offsets), np.asarray(frames), fingerprint, problems)


class CachedFbankDataset(Dataset):
    """``dataset``'s items with cached fbank crops in place of waveforms.

    Crops, rolls and views follow ``dataset``'s options (``num_frames``, ``random_crop``,
    ``roll_prob``, ``num_views``) and use its random generator; ``num_frames=None`` serves whole
    clips (evaluation in windows). Items: ``fbank`` float32 ``(T, F)`` or ``(V, T, F)`` (raw
    log-mel, zero-padded past the clip), ``frames`` (valid frames), ``target``, ``index``, ``skipped``,
    ``valid``. A clip that failed to load is replaced by the next good one, or, with the data set's
    ``replace_bad=False`` (evaluation), served as a ``valid=False`` placeholder; either way it is
    reported in ``skipped``.
    """

    def __init__(self, dataset, cache: FbankCache):
        self.dataset = dataset
        self.cache = cache
        self._values: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_values"] = None  # each worker maps the file itself
        return state

    def _crop(self, fbank: torch.Tensor) -> tuple[torch.Tensor, int]:
        dataset, size, total = self.dataset, self.dataset.num_frames, fbank.shape[0]
        if dataset.roll_prob > 0 and torch.rand((), generator=dataset.generator()).item() < dataset.roll_prob:
            fbank = torch.roll(fbank, dataset._randint(2 * total + 1) - total, dims=0)
        if size is None:
            return fbank, total
        if total <= size:
            return torch.nn.functional.pad(fbank, (0, 0, 0, size - total)), total
        start = dataset._randint(total - size + 1) if dataset.random_crop else 0
        return fbank[start : start + size], size

    def __getitem__(self, index: int) -> dict:
        if self._values is None:
            self._values = self.cache.values
        skipped = []
        for step in range(len(self)):
            i = (index + step) % len(self)
            if self.cache.offsets[i] >= 0:
                break
            skipped.append((self.dataset.paths[i], self.cache.problem(i)))
            if not getattr(self.dataset, "replace_bad", True):
                return self._placeholder(i, skipped)
        else:  # pragma: no cover - build() refuses an empty cache
            raise RuntimeError("no cached clip")
        start, count = int(self.cache.offsets[i]), int(self.cache.frames[i])
        fbank = torch.from_numpy(np.asarray(self._values[start : start + count], dtype=np.float32))
        views = [self._crop(fbank) for _ in range(self.dataset.num_views)]
        if self.dataset.num_views == 1:
            out, frames = views[0]
        else:
            out = torch.stack([v for v, _ in views])
            frames = torch.tensor([n for _, n in views], dtype=torch.int64)
        return {"fbank": out.contiguous(), "frames": frames, "target": self.dataset.target(i), "index": i,
                "skipped": skipped, "valid": True}

    def _placeholder(self, index: int, skipped: list) -> dict:
        """A bad clip's item in evaluation: zero frames (``num_frames``, or one), none valid, ``valid=False``."""
        views, size = self.dataset.num_views, self.dataset.num_frames or 1
        shape = (size, NUM_MEL_BINS) if views == 1 else (views, size, NUM_MEL_BINS)
        frames = 0 if views == 1 else torch.zeros(views, dtype=torch.int64)
        return {"fbank": torch.zeros(shape), "frames": frames, "target": self.dataset.target(index), "index": index,
                "skipped": skipped, "valid": False}


def spectrograms(batch: dict, frontend: FbankFrontend) -> torch.Tensor:
    """Normalised ``(B, 1, T, F)`` spectrograms from a batch of waveforms or of cached fbanks.

    Both paths give the same values for the same crop (the cache stores float16, so within about
    1e-2 in log-mel units): frames past a clip's end are zero before normalisation, as in AST.
    """
    device = frontend.filters.device
    if "fbank" not in batch:
        return frontend(batch["wave"].to(device, non_blocking=True), batch["length"].to(device, non_blocking=True))
    fbank = batch["fbank"].to(device, non_blocking=True)  # (B, T, F)
    valid = batch["frames"].to(device)
    keep = torch.arange(fbank.shape[1], device=device)[None, :] < valid[:, None]
    fbank = fbank * keep[..., None]
    if frontend.stats is not None:
        fbank = (fbank - frontend.stats.mean) / (2 * frontend.stats.std)
    return fbank.unsqueeze(1)


def valid_frames(batch: dict, sample_rate: int) -> torch.Tensor:
    """``(B,)`` fbank frames that hold audio in each clip of a batch (the rest is padding)."""
    if "frames" in batch:
        return batch["frames"]
    lengths = batch["length"]
    win, hop = window_length(sample_rate), hop_length(sample_rate)
    return torch.where(lengths >= win, 1 + (lengths - win).div(hop, rounding_mode="floor"), 0)


__all__ = ["FbankCache", "CachedFbankDataset", "spectrograms", "valid_frames"]
