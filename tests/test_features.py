"""The batched on-device filterbank equals torchaudio's per-clip Kaldi fbank (within 1e-4),
including the zero-padding of clips shorter than the crop."""

from __future__ import annotations

import pytest
import torch

from asit.audio import NormStats, kaldi_fbank, normalize, pad_or_crop, prepare_wave, samples_for_frames
from asit.features import FbankFrontend, batched_kaldi_fbank


@pytest.mark.parametrize("sample_rate", [16000, 22050, 32000, 44100])
def test_batched_fbank_matches_torchaudio(sample_rate):
    generator = torch.Generator().manual_seed(sample_rate)
    waves = torch.stack([prepare_wave(w) for w in torch.randn(4, sample_rate, generator=generator) * 0.2])
    reference = torch.stack([kaldi_fbank(w, sample_rate) for w in waves])
    batched = batched_kaldi_fbank(waves, sample_rate)
    assert batched.shape == reference.shape
    assert (batched - reference).abs().max().item() < 1e-4


def test_frontend_zero_pads_short_clips_like_the_reference_path():
    stats = NormStats(mean=-5.0, std=4.0)
    frontend = FbankFrontend(num_frames=120, stats=stats)
    generator = torch.Generator().manual_seed(0)
    lengths = [frontend.num_samples, 9000, 3000, 401]  # full, short, shorter, one frame
    waves = torch.zeros(len(lengths), frontend.num_samples)
    clips = []
    for row, length in enumerate(lengths):
        clip = prepare_wave(torch.randn(length, generator=generator) * 0.1)
        waves[row, :length] = clip
        clips.append(clip)
    out = frontend(waves, torch.tensor(lengths))
    assert out.shape == (4, 1, 120, 128)
    for row, clip in enumerate(clips):
        reference = normalize(pad_or_crop(kaldi_fbank(clip), 120), stats)
        assert (out[row, 0] - reference).abs().max().item() < 1e-4, f"clip {row} of {lengths[row]} samples differs"


def test_frontend_without_stats_returns_raw_log_mel():
    frontend = FbankFrontend(num_frames=10, stats=None)
    wave = prepare_wave(torch.randn(samples_for_frames(10, 16000)))
    torch.testing.assert_close(frontend(wave[None])[0, 0], kaldi_fbank(wave), atol=1e-4, rtol=0)


def test_frontend_rejects_a_single_waveform():
    with pytest.raises(ValueError, match="batch, samples"):
        FbankFrontend(num_frames=10, stats=None)(torch.randn(2000))


def test_large_cpu_batches_are_chunked_without_changing_the_result():
    from asit.features import CPU_CHUNK

    frontend = FbankFrontend(num_frames=30, stats=NormStats(mean=-5.0, std=4.0))
    waves = torch.stack([prepare_wave(w) for w in torch.randn(CPU_CHUNK * 2 + 3, frontend.num_samples) * 0.1])
    lengths = torch.full((waves.shape[0],), frontend.num_samples)
    lengths[5] = 2000
    out = frontend(waves, lengths)
    one_by_one = torch.cat([frontend(w[None], n[None]) for w, n in zip(waves, lengths)])
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=0)
