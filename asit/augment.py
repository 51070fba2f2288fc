"""Augmentations, batched on the training device.

- :class:`SpecAugment`: frequency and time masking (Park et al. 2019) through torchaudio's
  ``FrequencyMasking`` / ``TimeMasking``, with an independent mask per clip.
- :func:`mixup`: mixup (Zhang et al. 2018) of spectrograms and targets, AST-style by default:
  each clip is mixed with probability ``p`` with another clip of the batch, with a weight drawn
  from Beta(10, 10) (AST's data loader draws ``np.random.beta(10, 10)``).
- :class:`BackgroundNoise`: keyword-spotting noise mixing. A random segment of one of the
  ``_background_noise_`` recordings is added to the waveform at a random signal-to-noise ratio.
  It runs **on the device, in the waveform domain, before the fbank**: the data workers only
  crop waveforms (see :mod:`asit.features`), so the noise bank is loaded once onto the device.
- :func:`random_frequency_warp` (pretraining, ``view_warp``): each view of a clip with its frequency
  axis scaled by its own factor (vocal tract length perturbation, Jaitly and Hinton 2013), so that
  the two views of a spoken clip no longer share their speaker's pitch and formants.
- :func:`random_equaliser` (pretraining, ``view_eq_db``): each view of a clip through its own
  random microphone-and-room colouring, so that the two views of a clip no longer share a channel
  that the self-distillation could match them by instead of by their content.
- :func:`random_noise_floor` (pretraining, ``view_noise_snr``): each view of a clip over its own
  steady, coloured noise floor, so that the two views no longer share the channel's own floor.
  The training step runs the three in this order (:func:`asit.engine_pretrain.train_step`).

Layout: spectrograms are ``(B, 1, T, F)``, time is dim -2 and frequency dim -1 (see
``asit/README.md``). torchaudio's masks expect ``(..., freq, time)``, so :class:`SpecAugment`
transposes before and after.

AST masks the raw log-mel values with 0 *before* normalisation. Here the spectrogram arrives
normalised from :class:`asit.features.FbankFrontend`, and masks are filled with 0 after
normalisation, i.e. with the data set's mean level (``mask_value`` changes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchaudio
from scipy.stats import beta as scipy_beta
from torch import nn
from torchaudio.compliance import kaldi

from asit.audio import DEFAULT_SAMPLE_RATE, AUDIO_EXTENSIONS, NormStats, load_audio
from asit.features import LOW_FREQ


class SpecAugment(nn.Module):
    """Random frequency and time masks on a ``(B, 1, T, F)`` spectrogram batch (training only).

    Args:
        freq_mask: largest frequency-mask width in mel bins (AST: 48 AudioSet and Speech Commands,
            24 ESC-50); 0 disables it.
        time_mask: largest time-mask width in frames (AST: 192 AudioSet, 96 ESC-50, 48 Speech
            Commands); 0 disables it.
        num_masks: masks of each kind per clip (AST: one).
        mask_value: fill value of the masked pixels (0 = the mean on a normalised spectrogram).

    Each clip gets its own mask widths and positions (``iid_masks=True``). The module does
    nothing in eval mode.
    """

    def __init__(self, freq_mask: int, time_mask: int, num_masks: int = 1, mask_value: float = 0.0):
        super().__init__()
        self.freq_mask, self.time_mask, self.num_masks, self.mask_value = freq_mask, time_mask, num_masks, mask_value
        self.freq = torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True) if freq_mask > 0 else None
        self.time = torchaudio.transforms.TimeMasking(time_mask, iid_masks=True) if time_mask > 0 else None

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.freq is None and self.time is None):
            return spec
        if spec.dim() != 4:
            raise ValueError(f"SpecAugment expects (B, 1, T, F), got {tuple(spec.shape)}")
        x = spec.transpose(-1, -2)  # (B, 1, F, T): torchaudio's (..., freq, time)
        for _ in range(self.num_masks):
            if self.freq is not None:
                x = self.freq(x, self.mask_value)
            if self.time is not None:
                x = self.time(x, self.mask_value)
        return x.transpose(-1, -2)  # back to (B, 1, T, F)

    def extra_repr(self) -> str:
        return f"freq_mask={self.freq_mask}, time_mask={self.time_mask}, num_masks={self.num_masks}"


def equaliser_curves(count: int, bins: int, max_db: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """``(count, bins)`` random smooth gain curves over the mel bins, in dB.

    Each is a level change and a spectral tilt, both uniform in ``[-max_db, max_db]``, and a
    low-pass roll-off: above a cut-off drawn in the upper half of the bins the gain falls linearly
    to ``-depth`` at the top bin, ``depth`` uniform in ``[0, 2 max_db]``. The shapes a microphone,
    a room and a codec's band limit give a recording, at the scale of tens of dB.
    """
    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, 1, generator=generator, device=device)

    bin_position = torch.linspace(0.0, 1.0, bins, device=device)[None]  # (1, bins)
    level, tilt = uniform(-max_db, max_db), uniform(-max_db, max_db)
    cutoff, depth = uniform(0.5, 1.0), uniform(0.0, 2 * max_db)
    roll_off = (bin_position - cutoff).clamp_min(0) / (1 - cutoff).clamp_min(1e-3)
    return level + tilt * (bin_position - 0.5) - depth * roll_off


def random_equaliser(spec: torch.Tensor, max_db: float, std: float | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(N, 1, T, F)`` log-mel spectrograms, each with its own :func:`equaliser_curves` curve added.

    The fbank is the natural log of the mel energies, so ``g`` dB adds ``g ln(10) / 10``; a
    spectrogram normalised AST's way (``(x - mean) / (2 std)``) takes that divided by ``2 std``
    (``std=None``: raw log-mel). Padding frames are shifted alike, as a gain would shift silence.
    """
    if spec.dim() != 4:
        raise ValueError(f"random_equaliser expects (N, 1, T, F), got {tuple(spec.shape)}")
    if max_db <= 0:
        return spec
    curves_db = equaliser_curves(spec.shape[0], spec.shape[-1], max_db, generator, spec.device)
    log_gain = curves_db * (np.log(10.0) / 10) / (1.0 if std is None else 2 * std)
    return spec + log_gain[:, None, None, :].to(spec.dtype)


def random_noise_floor(spec: torch.Tensor, min_snr_db: float, stats: NormStats | None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``(N, 1, T, F)`` log-mel spectrograms, each over its own steady noise floor.

    The floor's level sits between ``min_snr_db`` and ``min_snr_db + 30`` dB (uniform) below the
    spectrogram's loudest frame (its mean over the bins), coloured by an :func:`equaliser_curves`
    curve of up to 5 dB; it is added in the energy domain (``log(exp(x) + exp(floor))``), so it
    fills the quiet frames and the gaps and leaves the loud parts nearly as they were. ``stats``:
    the spectrograms' normalisation (``None``: raw log-mel).
    """
    if spec.dim() != 4:
        raise ValueError(f"random_noise_floor expects (N, 1, T, F), got {tuple(spec.shape)}")
    mean, scale = (0.0, 1.0) if stats is None else (stats.mean, 2 * stats.std)
    raw = spec * scale + mean
    loudest = raw.mean(-1).amax(-1)[:, :, None, None]  # (N, 1, 1, 1)
    snr_db = min_snr_db + 30 * torch.rand(spec.shape[0], 1, 1, 1, generator=generator, device=spec.device)
    colour_db = equaliser_curves(spec.shape[0], spec.shape[-1], 5.0, generator, spec.device)[:, None, None, :]
    floor = loudest + (colour_db - snr_db) * (np.log(10.0) / 10)
    return ((torch.logaddexp(raw, floor.to(raw.dtype)) - mean) / scale).to(spec.dtype)


def warp_positions(factors: torch.Tensor, bins: int, sample_rate: int, low_freq: float = LOW_FREQ) -> torch.Tensor:
    """``(N, bins)`` fractional source bins: where output bin ``j`` of view ``n`` reads its input.

    A factor ``a`` moves every frequency ``f`` to ``a f``: the bin centred at ``f`` takes what the
    input had at ``f / a``, on the mel filterbank's own scale (centres evenly spaced in Kaldi mel
    between ``low_freq`` and Nyquist). Positions past either edge are clamped to it.
    """
    low, high = kaldi.mel_scale(torch.tensor(low_freq)), kaldi.mel_scale(torch.tensor(sample_rate / 2))
    step = (high - low) / (bins + 1)
    centres_hz = kaldi.inverse_mel_scale(low + step * torch.arange(1, bins + 1, device=factors.device))  # (bins,)
    source_mel = kaldi.mel_scale(centres_hz[None] / factors[:, None])
    return ((source_mel - low) / step - 1).clamp(0, bins - 1)


def frequency_warp(spec: torch.Tensor, factors: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """``(N, 1, T, F)`` log-mel spectrograms, spectrogram ``n`` with its frequencies scaled by ``factors[n]``.

    Each bin is interpolated linearly between its two source bins (:func:`warp_positions`), so a
    constant frame (padding) stays constant and a factor of 1 returns the input.
    """
    positions = warp_positions(factors, spec.shape[-1], sample_rate)  # (N, F)
    below = positions.floor().long().clamp(max=spec.shape[-1] - 2)
    weight = (positions - below).to(spec.dtype)[:, None, None, :]
    index = below[:, None, None, :].expand(-1, *spec.shape[1:3], -1)
    return torch.lerp(spec.gather(-1, index), spec.gather(-1, index + 1), weight)


def random_frequency_warp(spec: torch.Tensor, max_warp: float, sample_rate: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`frequency_warp` with a factor per spectrogram, log-uniform in ``[1 / (1 + max_warp), 1 + max_warp]``.

    A voice made higher or lower, pitch and formants together, as a shorter or longer vocal tract
    would make it (VTLP; Jaitly and Hinton draw factors in [0.9, 1.1]).
    """
    if spec.dim() != 4:
        raise ValueError(f"random_frequency_warp expects (N, 1, T, F), got {tuple(spec.shape)}")
    if max_warp <= 0:
        return spec
    span = float(np.log1p(max_warp))
    factors = torch.exp(span * (2 * torch.rand(spec.shape[0], generator=generator, device=spec.device) - 1))
    return frequency_warp(spec, factors, sample_rate)


def mixup(
    spec: torch.Tensor,
    targets: torch.Tensor,
    p: float,
    alpha: float = 10.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each clip, with probability ``p``, with another clip of the batch.

    A mixed clip ``i`` becomes ``lam * x_i + (1 - lam) * x_j`` with ``lam ~ Beta(alpha, alpha)``
    and ``j`` a random other clip; its target is mixed with the same weight, so every one-hot
    target keeps a total mass of 1. ``p`` is AST's ``mixup`` setting (0.5 AudioSet, 0.6 Speech
    Commands); ``alpha=10`` is AST's Beta(10, 10), which keeps ``lam`` near 0.5. The classic
    batch-level mixup of Zhang et al. is ``p=1`` with a small ``alpha`` (e.g. 0.2-0.4).

    Args:
        spec: ``(B, ...)`` spectrograms (or any per-clip tensors).
        targets: ``(B, C)`` one-hot or multi-hot float targets (convert class indices first with
            ``torch.nn.functional.one_hot``).

    Returns:
        The mixed ``spec`` and ``targets`` (new tensors; the inputs are not modified).
    """
    if targets.dim() != 2 or targets.shape[0] != spec.shape[0]:
        raise ValueError(f"mixup needs (B, C) float targets matching the batch, got {tuple(targets.shape)}")
    batch = spec.shape[0]
    if p <= 0 or batch < 2:
        return spec, targets
    device = spec.device
    # Draw on the CPU with the given generator (reproducible), then move: B numbers, cheap.
    mixed = torch.rand(batch, generator=generator) < p  # (B,)
    lam = _beta(alpha, batch, generator)
    lam = torch.where(mixed, lam, torch.ones_like(lam))  # unmixed clips keep weight 1
    # A partner other than the clip itself: shift a random permutation's index by 1..B-1.
    offset = torch.randint(1, batch, (batch,), generator=generator)
    partner = (torch.arange(batch) + offset) % batch
    lam, partner = lam.to(device), partner.to(device)
    lam_x = lam.view(batch, *([1] * (spec.dim() - 1))).to(spec.dtype)
    spec = lam_x * spec + (1 - lam_x) * spec[partner]
    lam_y = lam[:, None].to(targets.dtype)
    targets = lam_y * targets + (1 - lam_y) * targets[partner]
    return spec, targets


def _beta(alpha: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` Beta(alpha, alpha) samples by inverse CDF of uniforms, so a seeded generator
    reproduces them (``torch.distributions.Beta`` accepts no generator)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.from_numpy(scipy_beta.ppf(u.numpy(), alpha, alpha)).float()


def snr_db(signal: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``10 log10(P_signal / P_noise)`` in dB along the last dim."""
    return 10 * torch.log10(signal.pow(2).mean(-1) / noise.pow(2).mean(-1).clamp_min(1e-20))


class BackgroundNoise(nn.Module):
    """Add a random segment of background noise to each waveform at a random SNR.

    The standard keyword-spotting augmentation (Speech Commands ships ``_background_noise_``:
    white and pink noise, running tap, dishes, exercise bike, ...). It runs on the device on the
    ``(B, S)`` waveform batch, before the fbank:

    - with probability ``p`` a clip gets noise; the others are returned unchanged;
    - the noise is a random ``S``-sample segment of a random recording of the bank (recordings
      shorter than ``S`` are tiled);
    - the SNR is drawn uniformly in ``[snr_low, snr_high]`` dB and measured over the clip's valid
      samples (``lengths``); the noise is added over those samples only, so the zero padding
      (which :class:`~asit.features.FbankFrontend` masks) stays silent.

    Args:
        noises: the noise recordings, 1-D waveforms at the model's sample rate.
        snr_low, snr_high: SNR range in dB (our choice: 0-20 dB, a common KWS range).
        p: probability of adding noise to a clip (our choice: 0.8).
    """

    def __init__(self, noises: Sequence[torch.Tensor], snr_low: float = 0.0, snr_high: float = 20.0, p: float = 0.8):
        super().__init__()
        noises = [n.float().flatten() for n in noises if n.numel() > 0 and n.float().pow(2).mean() > 0]
        if not noises:
            raise ValueError("BackgroundNoise needs at least one non-silent noise recording")
        self.snr_low, self.snr_high, self.p = snr_low, snr_high, p
        # One flat buffer plus offsets: moves to the device with the module, no Python list of tensors.
        self.register_buffer("bank", torch.cat(noises), persistent=False)
        self.register_buffer("starts", torch.tensor([0] + [len(n) for n in noises]).cumsum(0)[:-1], persistent=False)
        self.register_buffer("sizes", torch.tensor([len(n) for n in noises]), persistent=False)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        portion: tuple[float, float] = (0.0, 1.0),
        **kwargs,
    ) -> "BackgroundNoise":
        """Load every audio file of ``folder`` (e.g. Speech Commands' ``_background_noise_``).

        ``portion``: the part of each recording to keep, as fractions of its length. KS1 cuts its
        test ``_silence_`` clips from the last 10 % of these files, so training keeps
        ``(0.0, 0.8)`` (the part KS1's training silence comes from) and never hears test noise.
        """
        files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in AUDIO_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"no audio files in {folder}")
        noises = []
        for f in files:
            wave = load_audio(f, sample_rate, max_seconds=None)
            noises.append(wave[int(portion[0] * len(wave)) : int(portion[1] * len(wave))])
        return cls(noises, **kwargs)

    @property
    def num_recordings(self) -> int:
        return len(self.sizes)

    def segments(self, batch: int, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch, num_samples)`` random noise segments (recordings shorter than that are tiled)."""
        device = self.bank.device
        which = torch.randint(0, self.num_recordings, (batch,), generator=generator).to(device)
        size = self.sizes[which]  # (B,)
        offset = (torch.rand(batch, generator=generator).to(device) * size).long()  # (B,) start inside the recording
        position = (offset[:, None] + torch.arange(num_samples, device=device)[None, :]) % size[:, None]  # (B, S)
        return self.bank[self.starts[which][:, None] + position]

    def forward(
        self,
        waves: torch.Tensor,
        lengths: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        snr: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``waves``: ``(B, S)``; ``lengths``: ``(B,)`` valid samples; ``snr``: optional fixed ``(B,)`` dB.

        Returns the noisy waveforms (a new tensor). Silent clips are left unchanged (no SNR exists).
        """
        if not self.training:
            return waves
        batch, num_samples = waves.shape
        device = waves.device
        if lengths is None:
            lengths = torch.full((batch,), num_samples, device=device)
        valid = torch.arange(num_samples, device=device)[None, :] < lengths.to(device)[:, None]  # (B, S)
        noise = self.segments(batch, num_samples, generator) * valid
        if snr is None:
            snr = self.snr_low + (self.snr_high - self.snr_low) * torch.rand(batch, generator=generator)
        snr = snr.to(device=device, dtype=torch.float32)
        count = valid.sum(-1).clamp_min(1)
        signal_power = (waves.float() * valid).pow(2).sum(-1) / count
        noise_power = noise.pow(2).sum(-1) / count
        # Scale so that 10 log10(signal_power / (scale^2 noise_power)) = snr.
        scale = torch.sqrt(signal_power / (noise_power.clamp_min(1e-20) * 10 ** (snr / 10)))
        apply = (torch.rand(batch, generator=generator).to(device) < self.p) & (signal_power > 0) & (noise_power > 0)
        scale = torch.where(apply, scale, torch.zeros_like(scale))
        return (waves.float() + scale[:, None] * noise).to(waves.dtype)

    def extra_repr(self) -> str:
        return f"recordings={self.num_recordings}, snr=[{self.snr_low}, {self.snr_high}] dB, p={self.p}"


__all__ = [
    "SpecAugment", "mixup", "BackgroundNoise", "snr_db",
    "equaliser_curves", "random_equaliser", "random_noise_floor",
    "warp_positions", "frequency_warp", "random_frequency_warp",
]
