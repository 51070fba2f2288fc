"""The per-clip reference front end: reading, resampling, the Kaldi fbank, padding, normalising,
and a clear error naming the file for every kind of bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from asit.audio import (
    DATASET_STATS,
    AudioError,
    NormStats,
    clip_fbank,
    compute_norm_stats,
    frames_for_samples,
    kaldi_fbank,
    load_audio,
    normalize,
    pad_or_crop,
    prepare_wave,
    samples_for_frames,
)


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def mel_of(freq_hz: float) -> float:
    return 1127.0 * math.log(1 + freq_hz / 700.0)


def test_fbank_shape_and_values_match_torchaudio(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, sine(1000, 2.0, 16000), 16000)
    wave = prepare_wave(load_audio(path))
    fbank = kaldi_fbank(wave)
    # 2 s at a 10 ms hop with whole 25 ms windows only
    assert fbank.shape == (1 + (32000 - 400) // 160, 128) == (198, 128)
    expected = torchaudio.compliance.kaldi.fbank(
        wave[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
    )
    torch.testing.assert_close(fbank, expected)
    # The loudest mel bin holds 1 kHz: its centre lies within one bin spacing of mel(1000).
    low, high = mel_of(20), mel_of(8000)
    centres = low + (torch.arange(128) + 1) * (high - low) / 129
    peak = fbank.mean(0).argmax()
    assert abs(centres[peak].item() - mel_of(1000)) < (high - low) / 129


def test_resampling_keeps_duration_and_pitch(tmp_path):
    path = tmp_path / "tone44k.wav"
    sf.write(path, sine(440, 1.5, 44100), 44100)
    wave = load_audio(path, sample_rate=16000)
    assert wave.dtype == torch.float32 and wave.shape == (24000,)
    spectrum = torch.fft.rfft(wave).abs()
    peak_hz = spectrum.argmax().item() * 16000 / wave.numel()
    assert abs(peak_hz - 440) < 2


def test_resampling_agrees_with_torchaudio_below_the_new_nyquist():
    """soxr (the recipe's sox resampler) and torchaudio's sinc resampler differ only near the new
    Nyquist frequency, where the two low-pass filters roll off differently."""
    from asit.audio import resample

    rate = 32000
    t = np.arange(2 * rate) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t)).astype(np.float32)
    ours = resample(wave, rate, 16000)
    reference = torchaudio.functional.resample(torch.from_numpy(wave), rate, 16000).numpy()
    assert ours.dtype == np.float32 and ours.shape == reference.shape == (32000,)
    assert np.abs(ours[200:-200] - reference[200:-200]).max() < 1e-3  # edges: each pads differently
    assert resample(wave, rate, rate) is wave
    with pytest.raises(ValueError, match="positive"):
        resample(wave, 0, 16000)


def test_multichannel_is_averaged_to_mono(tmp_path):
    left, right = sine(300, 1.0, 16000), sine(300, 1.0, 16000, amplitude=0.1)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 16000)
    wave = load_audio(path)
    assert wave.dim() == 1
    np.testing.assert_allclose(wave.numpy(), (left + right) / 2, atol=1e-4)  # FLAC is 16-bit


def test_ogg_is_read(tmp_path):
    path = tmp_path / "clip.ogg"
    sf.write(path, sine(500, 1.0, 22050), 22050)
    assert load_audio(path).shape == (16000,)


def test_pad_or_crop_and_normalize():
    fbank = torch.arange(10 * 4, dtype=torch.float32).reshape(10, 4)
    padded = pad_or_crop(fbank, 12)
    assert padded.shape == (12, 4) and torch.equal(padded[:10], fbank) and padded[10:].abs().sum() == 0
    assert torch.equal(pad_or_crop(fbank, 3, start=5), fbank[5:8])
    assert torch.equal(pad_or_crop(fbank, 3, start=50), fbank[7:10])  # clamped to the end
    stats = NormStats(mean=2.0, std=4.0)
    assert normalize(torch.tensor([10.0]), stats).item() == pytest.approx(1.0)  # (10 - 2) / 8


def test_frame_arithmetic_is_consistent():
    for frames in (1, 98, 128, 512, 592, 1024):
        samples = samples_for_frames(frames, 16000)
        assert frames_for_samples(samples, 16000) == frames
        assert frames_for_samples(samples - 1, 16000) == frames - 1
    assert samples_for_frames(592, 16000) == 400 + 591 * 160


def test_clip_fbank_is_the_whole_reference_path(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, sine(700, 0.5, 8000), 8000)
    out = clip_fbank(path, DATASET_STATS["esc50"], num_frames=100)
    wave = prepare_wave(load_audio(path))
    expected = normalize(pad_or_crop(kaldi_fbank(wave), 100), DATASET_STATS["esc50"])
    torch.testing.assert_close(out, expected)
    assert out.shape == (100, 128)


def test_compute_norm_stats_over_several_fbanks():
    a, b = torch.randn(50, 8) * 3 + 1, torch.randn(70, 8) * 3 + 1
    stats = compute_norm_stats([a, b])
    everything = torch.cat([a, b]).double()
    assert stats.mean == pytest.approx(everything.mean().item(), abs=1e-9)
    assert stats.std == pytest.approx(everything.std(unbiased=False).item(), rel=1e-6)
    with pytest.raises(ValueError):
        compute_norm_stats([])


# --- bad input: each raises an AudioError that names the file and the problem -----------------


def _write_bad(kind: str, tmp_path):
    path = tmp_path / f"{kind}.wav"
    good = sine(440, 1.0, 16000)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_audio":
        path.write_text("this is a text file with an audio extension\n" * 20)
    elif kind == "truncated":
        sf.write(path, good, 16000)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "header_only":
        sf.write(path, good, 16000)
        path.write_bytes(path.read_bytes()[:30])
    elif kind == "nan":
        bad = good.copy()
        bad[100] = np.nan
        sf.write(path, bad, 16000, subtype="FLOAT")
    elif kind == "inf":
        bad = good.copy()
        bad[5] = np.inf
        sf.write(path, bad, 16000, subtype="FLOAT")
    elif kind == "zero_length":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif kind == "ten_ms":
        sf.write(path, good[:160], 16000)
    elif kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("empty", "empty"),
        ("not_audio", "not a readable audio file"),
        ("truncated", "truncated"),
        ("header_only", "not a readable audio file"),
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("zero_length", "no samples"),
        ("ten_ms", "too short"),
        ("missing", "does not exist"),
        ("directory", "directory"),
    ],
)
def test_bad_files_raise_an_error_naming_file_and_problem(kind, problem, tmp_path):
    path = _write_bad(kind, tmp_path)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert problem in info.value.problem


def test_overlong_clip_is_refused_before_decoding(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 5, np.float32), 16000)
    with pytest.raises(AudioError, match="too long"):
        load_audio(path, max_seconds=2.0)
    assert load_audio(path, max_seconds=None).shape == (80000,)


def test_audio_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(AudioError("/x/y.wav", "is empty (0 bytes)")))
    assert isinstance(err, AudioError) and err.path == "/x/y.wav" and "y.wav: is empty" in str(err)
