"""Audio front end: read a clip, resample, Kaldi filterbank, pad or crop, normalise.

This is the per-clip *reference* path, exactly the AST / ASiT recipe:

    wave -> mono -> resample -> remove mean -> kaldi fbank (128 mel, 25 ms Hanning, 10 ms hop)
         -> pad with zeros / crop to a frame count -> (x - mean) / (2 * std)

Training does not use it clip by clip: data workers only decode, resample and crop waveforms,
and :mod:`asit.features` computes the same filterbank batched on the training device. The tests
hold the two paths equal.

Every problem with a file raises :class:`AudioError`, whose message names the file and the
problem; data sets catch it, count the file as skipped and say why.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio

DEFAULT_SAMPLE_RATE = 16_000  # the later ASiT revision's default (the earlier one used 32 kHz)
NUM_MEL_BINS = 128
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

# A clip shorter than one analysis window has no fbank frame at all.
MIN_SECONDS = FRAME_LENGTH_MS / 1000
# Longer than any clip of the paper's data sets (VoxCeleb1's longest is about 145 s): an hour-long
# file in a training set is far more likely a mistake than data, and would stall a worker.
MAX_SECONDS = 600.0

# Audio is read as float in [-1, 1] (full scale). A float file far louder than that (3e29 has been
# seen) makes every later number absurd: its filterbank overflows float32 to inf from about 1e16
# (a 400-sample frame's power spectrum passes 3.4e38), and louder than 1e3 is 60 dB over full
# scale, no recording level at all but a writer that forgot to scale (or garbage).
MAX_ABS_SAMPLE = 1e3

_TRUNCATED_WAV = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)


def display_path(path: str | Path) -> str:
    """``path`` as printable text: bytes of a non-UTF-8 name (which Python keeps as lone
    surrogates) appear as ``\\xe9`` escapes instead of failing every ``print`` and log line."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _soundfile_source(path: Path):
    """What to give soundfile: the path, or an open file when the name is not UTF-8 (soundfile
    encodes names as UTF-8 and fails on such a name, although the file opens fine)."""
    try:
        str(path).encode("utf-8")
        return str(path)
    except UnicodeEncodeError:
        return open(path, "rb")


class AudioError(ValueError):
    """A file that cannot be used as audio. ``str(err)`` is ``"<path>: <problem>"`` (the path
    printable, see :func:`display_path`); ``err.path`` is the path itself."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{display_path(path)}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self):  # picklable, so errors survive DataLoader worker processes
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class NormStats:
    """Mean and standard deviation of a data set's log-mel pixels (AST convention)."""

    mean: float
    std: float


# Published statistics used across the AST family (see the method reference). Other data sets
# get their own, from :func:`compute_norm_stats` over their training split.
DATASET_STATS: dict[str, NormStats] = {
    "audioset": NormStats(-4.2677393, 4.5689974),
    "esc50": NormStats(-6.6268077, 5.358466),
    "speech_commands_v2": NormStats(-6.845978, 5.5654526),
}


def hop_length(sample_rate: int) -> int:
    """Samples between two fbank frames (10 ms)."""
    return int(sample_rate * FRAME_SHIFT_MS / 1000)


def window_length(sample_rate: int) -> int:
    """Samples in one fbank frame (25 ms)."""
    return int(sample_rate * FRAME_LENGTH_MS / 1000)


def frames_for_samples(num_samples: int, sample_rate: int) -> int:
    """Number of fbank frames Kaldi produces for a clip (``snip_edges=True``: whole windows only)."""
    win = window_length(sample_rate)
    if num_samples < win:
        return 0
    return 1 + (num_samples - win) // hop_length(sample_rate)


def samples_for_frames(num_frames: int, sample_rate: int) -> int:
    """Fewest samples that give ``num_frames`` fbank frames."""
    if num_frames <= 0:
        return 0
    return window_length(sample_rate) + (num_frames - 1) * hop_length(sample_rate)


def window_starts(num_samples: int, window: int, hop: int, overlap: float = 0.5) -> list[int]:
    """Start positions of the windows covering a clip of ``num_samples``.

    One window at 0 when the clip fits; else windows every ``(1 - overlap) * window`` samples
    (rounded down to whole multiples of ``hop``: fbank hops for waveforms), plus one ending exactly
    at the clip's end. Counted in frames with ``hop=1``, it windows a spectrogram.
    """
    if num_samples <= window:
        return [0]
    step = max(hop, int((1 - overlap) * window) // hop * hop)
    starts = list(range(0, num_samples - window + 1, step))
    if starts[-1] != num_samples - window:
        starts.append(num_samples - window)
    return starts


def _read_header(path: Path) -> sf._SoundFileInfo:
    if not path.exists():
        raise AudioError(path, "is a broken symbolic link" if path.is_symlink() else "file does not exist")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise AudioError(path, "cannot be read: permission denied") from None
    except OSError as err:
        raise AudioError(path, f"cannot be opened ({err.strerror})") from None
    if path.stat().st_size == 0:
        raise AudioError(path, "is empty (0 bytes)")
    source = _soundfile_source(path)
    try:
        return sf.info(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(path, f"is not a readable audio file ({err})") from None
    finally:
        if not isinstance(source, str):
            source.close()


def check_audio(
    path: str | Path,
    *,
    min_seconds: float = MIN_SECONDS,
    max_seconds: float | None = MAX_SECONDS,
) -> float:
    """The checks that need only the file's header; returns the clip's duration in seconds.

    Raises :class:`AudioError` for a missing, unreadable, empty, truncated or non-audio file and
    for clips shorter than ``min_seconds`` or longer than ``max_seconds``. About 50 us a file:
    cheap enough to run over a whole data set before training. NaN samples and corrupt data past
    the header are only found when decoding (:func:`load_audio`).
    """
    path = Path(path)
    info = _read_header(path)
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(path, "contains no samples")
    duration = info.frames / info.samplerate
    if duration < min_seconds:
        raise AudioError(path, f"is too short: {duration * 1000:.1f} ms, the minimum is {min_seconds * 1000:.0f} ms")
    if max_seconds is not None and duration > max_seconds:
        raise AudioError(path, f"is too long: {duration:.1f} s, the limit is {max_seconds:.0f} s (max_seconds)")
    truncated = _TRUNCATED_WAV.search(info.extra_info or "")
    if truncated:
        raise AudioError(
            path, f"is truncated: its header declares {truncated.group(1)} bytes of audio, the file holds {truncated.group(2)}"
        )
    return duration


def load_audio(
    path: str | Path,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    *,
    min_seconds: float = MIN_SECONDS,
    max_seconds: float | None = MAX_SECONDS,
) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform at ``sample_rate``.

    Multichannel audio is averaged to mono; any other source rate is resampled (:func:`resample`).
    Raises :class:`AudioError` for a missing, unreadable, empty, truncated or non-audio file,
    NaN or infinite samples, and clips shorter than ``min_seconds`` or longer than ``max_seconds``.

    Returns:
        ``(num_samples,)`` float32 tensor. The mean is *not* removed here (see :func:`prepare_wave`).
    """
    path = Path(path)
    check_audio(path, min_seconds=min_seconds, max_seconds=max_seconds)
    source = _soundfile_source(path)
    try:
        data, source_rate = sf.read(source, dtype="float32", always_2d=True)  # (frames, channels)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(path, f"cannot be decoded, probably truncated or corrupt ({err})") from None
    finally:
        if not isinstance(source, str):
            source.close()
    if data.shape[0] == 0:
        raise AudioError(path, "contains no samples")
    check_samples(data, path)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if source_rate != sample_rate:
        mono = resample(mono, source_rate, sample_rate)
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


def check_samples(data: np.ndarray, path: str | Path) -> None:
    """Raise :class:`AudioError` for NaN / infinite samples or samples beyond ``MAX_ABS_SAMPLE``."""
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(path, f"contains {bad} NaN or infinite sample(s)")
    peak = float(np.abs(data).max())
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            path, f"has absurd sample values (peak {peak:.3g}; audio is read in [-1, 1], the limit is "
            f"{MAX_ABS_SAMPLE:g}): its filterbank would be meaningless or overflow to inf"
        )


def check_fbank(fbank: torch.Tensor, path: str | Path) -> torch.Tensor:
    """``fbank`` itself, or :class:`AudioError` naming ``path`` when a value is NaN or infinite:
    the last check before a model sees a clip (the samples can be finite and the fbank not)."""
    bad = ~torch.isfinite(fbank)
    if bad.any():
        raise AudioError(path, f"gives a filterbank with {int(bad.sum())} NaN or infinite value(s)")
    return fbank


def resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D float32 waveform with soxr, the SoX resampler ("HQ": 20-bit precision,
    flat to 0.91 of the new Nyquist frequency).

    AST's recipe resamples ESC-50 to 16 kHz with sox before training, so this is the recipe's own
    resampler. It is also 2-5x cheaper per clip than
    ``torchaudio.functional.resample`` on one thread (about 1 ms for 10 s at 32 kHz), and
    resampling is most of what a data worker does (``python -m asit.bench``). The output holds
    ``len(wave) * target_rate / source_rate`` samples, rounded.
    """
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate} -> {target_rate}")
    if source_rate == target_rate:
        return wave
    return soxr.resample(np.ascontiguousarray(wave, dtype=np.float32), source_rate, target_rate, quality="HQ")


def prepare_wave(wave: torch.Tensor) -> torch.Tensor:
    """Remove the clip's mean (AST and ASiT do so before the filterbank)."""
    return wave - wave.mean()


def kaldi_fbank(wave: torch.Tensor, sample_rate: int = DEFAULT_SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS) -> torch.Tensor:
    """Kaldi-compatible log-mel filterbank of one mean-removed clip, as in AST and ASiT.

    Args:
        wave: ``(num_samples,)`` waveform (already mean-removed, see :func:`prepare_wave`).

    Returns:
        ``(num_frames, num_mel_bins)``: time x frequency.
    """
    if wave.dim() != 1:
        raise ValueError(f"kaldi_fbank expects a 1-D waveform, got shape {tuple(wave.shape)}")
    if wave.numel() < window_length(sample_rate):
        raise ValueError(f"a clip of {wave.numel()} samples is shorter than one {FRAME_LENGTH_MS:.0f} ms window")
    return torchaudio.compliance.kaldi.fbank(
        wave[None].float(),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=FRAME_SHIFT_MS,
        frame_length=FRAME_LENGTH_MS,
    )


def pad_or_crop(fbank: torch.Tensor, num_frames: int, start: int = 0) -> torch.Tensor:
    """Zero-pad at the end or crop ``(T, F)`` to ``(num_frames, F)``, the crop starting at ``start``."""
    frames = fbank.shape[0]
    if frames < num_frames:
        return torch.nn.functional.pad(fbank, (0, 0, 0, num_frames - frames))
    start = max(0, min(start, frames - num_frames))
    return fbank[start : start + num_frames]


def normalize(fbank: torch.Tensor, stats: NormStats) -> torch.Tensor:
    """AST normalisation ``(x - mean) / (2 * std)``."""
    return (fbank - stats.mean) / (2 * stats.std)


def clip_fbank(
    path: str | Path,
    stats: NormStats,
    num_frames: int | None = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    num_mel_bins: int = NUM_MEL_BINS,
    padding: str = "fbank",
) -> torch.Tensor:
    """The whole reference path for one file: ``(num_frames, num_mel_bins)`` normalised fbank.

    ``padding`` for a clip shorter than ``num_frames``: ``"fbank"`` zero-pads the fbank (AST);
    ``"waveform"`` zero-pads the waveform before the fbank (the released ASiT pretraining).
    """
    wave = prepare_wave(load_audio(path, sample_rate))
    if padding == "waveform" and num_frames is not None:
        wave = torch.nn.functional.pad(wave, (0, max(0, samples_for_frames(num_frames, sample_rate) - wave.numel())))
    fbank = check_fbank(kaldi_fbank(wave, sample_rate, num_mel_bins), path)
    if num_frames is not None:
        fbank = pad_or_crop(fbank, num_frames)
    return normalize(fbank, stats)


def compute_norm_stats(fbanks: Iterable[torch.Tensor]) -> NormStats:
    """Mean and std over every pixel of the given (unnormalised) fbanks, in float64.

    Use it over a training split for a data set without published statistics.
    """
    count, total, total_sq = 0, 0.0, 0.0
    for fbank in fbanks:
        values = fbank.detach().double()
        count += values.numel()
        total += values.sum().item()
        total_sq += values.square().sum().item()
    if count == 0:
        raise ValueError("compute_norm_stats got no fbank values")
    if not (math.isfinite(total) and math.isfinite(total_sq)):
        raise ValueError("compute_norm_stats got NaN or infinite fbank values: check the fbanks with check_fbank first")
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return NormStats(mean=float(mean), std=float(math.sqrt(var)) or 1.0)
