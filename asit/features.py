"""Batched Kaldi filterbank on the training device.

The released ASiT code computes one fbank per clip inside CPU data workers, which starves a GPU
on a 2-vCPU machine. Here the workers only decode, resample and crop waveforms; this module turns
a whole batch of waveforms into normalised spectrograms in a few tensor operations on whatever
device the batch is on.

:func:`batched_kaldi_fbank` reproduces ``torchaudio.compliance.kaldi.fbank`` with the AST / ASiT
settings (``htk_compat=True, use_energy=False, window_type="hanning", dither=0``) step by step:
frames of 25 ms every 10 ms, per-frame DC removal, pre-emphasis 0.97, Hann window, zero-padding
to a power of two, power spectrum, mel filters, log. The tests hold it within 1e-4 of torchaudio.
"""

from __future__ import annotations

import torch
from torch import nn
from torchaudio.compliance import kaldi

from asit.audio import (
    DEFAULT_SAMPLE_RATE,
    NUM_MEL_BINS,
    NormStats,
    frames_for_samples,
    hop_length,
    samples_for_frames,
    window_length,
    window_starts,
)

PREEMPHASIS = 0.97  # Kaldi's default
# On a CPU, clips are processed this many at a time: a batch of 64 ten-second clips makes
# intermediates of about 300 MB, which run out of cache and end up slower than one clip at a
# time; chunks of 8 stay fast. Accelerators take the whole batch at once.
CPU_CHUNK = 8
LOW_FREQ = 20.0  # Kaldi's default lowest mel edge (Hz)


def _padded_window_size(win: int) -> int:
    return 1 << (win - 1).bit_length()  # round up to a power of two, as Kaldi does


def mel_filterbank(sample_rate: int = DEFAULT_SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS) -> torch.Tensor:
    """Kaldi's triangular mel filters as ``(num_fft_bins, num_mel_bins)``, ready for ``power @ filters``."""
    padded = _padded_window_size(window_length(sample_rate))
    banks, _ = kaldi.get_mel_banks(num_mel_bins, padded, float(sample_rate), LOW_FREQ, 0.0, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks, (0, 1))  # Kaldi has no weight on the Nyquist bin
    return banks.T.contiguous().float()


def batched_kaldi_fbank(
    waves: torch.Tensor,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    num_mel_bins: int = NUM_MEL_BINS,
    filters: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-mel filterbank of a batch of equal-length, mean-removed waveforms.

    Args:
        waves: ``(B, S)`` waveforms on any device.
        filters: optional precomputed :func:`mel_filterbank` on the same device.

    Returns:
        ``(B, T, num_mel_bins)`` with ``T = frames_for_samples(S)``, as Kaldi computes per clip.
    """
    if waves.dim() != 2:
        raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(waves.shape)}")
    win, hop = window_length(sample_rate), hop_length(sample_rate)
    if waves.shape[1] < win:
        raise ValueError(f"{waves.shape[1]} samples is shorter than one {win}-sample window")
    padded = _padded_window_size(win)
    frames = waves.float().unfold(1, win, hop)  # (B, T, win)
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove_dc_offset
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # Kaldi replicates the first sample
    frames = frames - PREEMPHASIS * previous
    window = torch.hann_window(win, periodic=False, device=waves.device, dtype=frames.dtype)
    frames = frames * window
    spectrum = torch.fft.rfft(frames, n=padded).abs().pow(2)  # (B, T, padded // 2 + 1)
    if filters is None:
        filters = mel_filterbank(sample_rate, num_mel_bins).to(waves.device)
    mel = spectrum @ filters  # (B, T, num_mel_bins)
    return mel.clamp_min(torch.finfo(mel.dtype).eps).log()


PADDINGS = ("fbank", "waveform")


class FbankFrontend(nn.Module):
    """Waveform batch -> normalised spectrogram batch ``(B, 1, T, F)`` on the batch's device.

    A clip shorter than the crop arrives zero-padded (the data sets pad the waveform). Two ways
    to treat the frames past its end (``padding``):

    - ``"fbank"`` (default): frames past the clip's true length are set to a zero log-mel *before*
      normalisation, as AST's fine-tuning pipeline zero-pads a short clip's fbank (``-mean / 2 std``
      after normalisation, +0.47 with the AudioSet statistics). Equals the per-clip reference path
      (:func:`asit.audio.clip_fbank`) for every clip, short or long.
    - ``"waveform"``: the fbank of the zero-padded waveform as it is, as the released pretraining
      code computes it: silent frames hold ``log(eps)`` (-15.9 raw, -1.28 after normalisation
      with the AudioSet statistics) and the frames across the clip's end mix both.

    Args:
        num_frames: output frame count; waveforms are expected to hold
            ``samples_for_frames(num_frames)`` samples (what the data sets' crop produces).
            ``None``: every frame the batch's waveforms give (whole clips, for evaluation).
        stats: normalisation statistics; ``None`` returns the raw log-mel values.
        padding: ``"fbank"`` or ``"waveform"``, see above.
    """

    def __init__(
        self,
        num_frames: int | None,
        stats: NormStats | None,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        num_mel_bins: int = NUM_MEL_BINS,
        padding: str = "fbank",
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        self.padding = padding
        self.num_frames = num_frames
        self.stats = stats
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins
        self.register_buffer("filters", mel_filterbank(sample_rate, num_mel_bins), persistent=False)

    @property
    def num_samples(self) -> int:
        """Waveform length that yields exactly ``num_frames`` frames."""
        if self.num_frames is None:
            raise ValueError("this front end takes whole clips (num_frames=None): it has no fixed input length")
        return samples_for_frames(self.num_frames, self.sample_rate)

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``waves``: ``(B, S)``; ``lengths``: ``(B,)`` valid samples per clip (``None``: all valid)."""
        if waves.device.type == "cpu" and waves.shape[0] > CPU_CHUNK:
            fbank = torch.cat(
                [batched_kaldi_fbank(chunk, self.sample_rate, self.num_mel_bins, self.filters) for chunk in waves.split(CPU_CHUNK)]
            )
        else:
            fbank = batched_kaldi_fbank(waves, self.sample_rate, self.num_mel_bins, self.filters)
        frames = fbank.shape[1]
        num_frames = frames if self.num_frames is None else self.num_frames
        if frames < num_frames:  # what silence gives under each padding: zero or log(eps)
            silence = 0.0 if self.padding == "fbank" else float(fbank.new_tensor(torch.finfo(fbank.dtype).eps).log())
            fbank = torch.nn.functional.pad(fbank, (0, 0, 0, num_frames - frames), value=silence)
        fbank = fbank[:, :num_frames]
        if lengths is not None and self.padding == "fbank":
            win, hop = window_length(self.sample_rate), hop_length(self.sample_rate)
            lengths = lengths.to(fbank.device)
            valid = torch.where(lengths >= win, 1 + (lengths - win).div(hop, rounding_mode="floor"), 0)
            keep = torch.arange(num_frames, device=fbank.device)[None, :] < valid[:, None]
            fbank = fbank * keep[..., None]
        if self.stats is not None:
            fbank = (fbank - self.stats.mean) / (2 * self.stats.std)
        return fbank.unsqueeze(1)  # (B, 1, T, F)

    def extra_repr(self) -> str:
        return (
            f"num_frames={self.num_frames}, sample_rate={self.sample_rate}, num_mel_bins={self.num_mel_bins}, "
            f"stats={self.stats}, padding={self.padding!r}"
        )


def clip_windows(
    spec: torch.Tensor, frames: torch.Tensor, window: int, pad_value: float = 0.0, overlap: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut whole-clip spectrograms into model inputs of ``window`` frames, as :mod:`asit.predict` does.

    Each clip gets the windows of :func:`asit.audio.window_starts` over its ``frames`` valid
    frames (50 % overlap, the last one ending at the clip's end); a clip shorter than ``window``
    gets one window, padded past the clip's end.

    Args:
        spec: ``(B, 1, T, F)`` normalised spectrograms of whole clips, padded to the longest.
        frames: ``(B,)`` valid frames per clip.
        pad_value: the value of a padding frame (a zero log-mel after normalisation, as in
            training: :func:`padding_value`), used when even the longest clip is shorter than ``window``.

    Returns:
        ``windows`` ``(W, 1, window, F)`` and ``owner`` ``(W,)``: the clip (row of ``spec``) of each window.
    """
    if spec.shape[2] < window:
        spec = torch.nn.functional.pad(spec, (0, 0, 0, window - spec.shape[2]), value=pad_value)
    pieces, owner = [], []
    for row, count in enumerate(frames.tolist()):
        for start in window_starts(max(int(count), 1), window, hop=1, overlap=overlap):
            pieces.append(spec[row, :, start : start + window])
            owner.append(row)
    return torch.stack(pieces), torch.tensor(owner, dtype=torch.int64, device=spec.device)


def padding_value(stats: NormStats | None) -> float:
    """What a padding frame (zero log-mel) becomes after normalisation with ``stats``."""
    return 0.0 if stats is None else -stats.mean / (2 * stats.std)


__all__ = ["PADDINGS", "FbankFrontend", "clip_windows", "padding_value", "batched_kaldi_fbank", "mel_filterbank", "frames_for_samples", "samples_for_frames"]
