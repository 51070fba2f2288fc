"""SpecAugment masks the right axes, mixup keeps the label mass, noise reaches the requested SNR."""

import pytest
import numpy as np
import torch

from asit.augment import BackgroundNoise, SpecAugment, mixup, snr_db


def _masked(spec: torch.Tensor) -> torch.Tensor:
    return spec == 0.0  # inputs below are all ones, masks fill with 0


def test_frequency_mask_covers_whole_mel_columns():
    torch.manual_seed(0)
    spec = torch.ones(8, 1, 40, 16)  # (B, 1, T, F)
    out = SpecAugment(freq_mask=6, time_mask=0).train()(spec)
    masked = _masked(out)
    assert masked.any()
    for b in range(8):
        columns = masked[b, 0].any(dim=0)  # which mel bins (dim -1) are touched
        # a frequency mask blanks a mel bin at every time step
        assert torch.equal(masked[b, 0][:, columns], torch.ones(40, int(columns.sum()), dtype=torch.bool))
        assert columns.sum() <= 6
    # masks are drawn per clip, not one for the whole batch
    assert len({tuple(masked[b, 0, 0].tolist()) for b in range(8)}) > 1


def test_time_mask_covers_whole_frames():
    torch.manual_seed(1)
    spec = torch.ones(8, 1, 40, 16)
    out = SpecAugment(freq_mask=0, time_mask=10).train()(spec)
    masked = _masked(out)
    assert masked.any()
    for b in range(8):
        rows = masked[b, 0].any(dim=1)  # which frames (dim -2) are touched
        assert torch.equal(masked[b, 0][rows], torch.ones(int(rows.sum()), 16, dtype=torch.bool))
        assert rows.sum() <= 10


def test_specaugment_is_identity_in_eval_mode():
    spec = torch.randn(2, 1, 32, 16)
    assert torch.equal(SpecAugment(8, 8).eval()(spec), spec)


def test_mixup_keeps_label_mass_and_mixes_consistently():
    g = torch.Generator().manual_seed(0)
    batch, classes = 16, 5
    labels = torch.arange(batch) % classes
    targets = torch.nn.functional.one_hot(labels, classes).float()
    spec = labels.float().view(batch, 1, 1, 1).expand(batch, 1, 4, 3).clone()  # clip i filled with its label
    mixed_spec, mixed_targets = mixup(spec, targets, p=1.0, alpha=10.0, generator=g)
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(batch))  # every row still sums to 1
    # the spectrogram is mixed with the same weights: its value is the expected label under the target
    expected = (mixed_targets * torch.arange(classes).float()).sum(dim=1)
    assert torch.allclose(mixed_spec[:, 0, 0, 0], expected, atol=1e-5)
    assert not torch.equal(mixed_targets, targets)  # something was mixed
    # p = 0 leaves everything as it was
    same_spec, same_targets = mixup(spec, targets, p=0.0, generator=g)
    assert torch.equal(same_spec, spec) and torch.equal(same_targets, targets)


def test_mixup_with_probability_mixes_about_that_share():
    g = torch.Generator().manual_seed(0)
    targets = torch.eye(1000)  # every clip its own class, so any mix shows in the target
    _, mixed = mixup(torch.zeros(1000, 1), targets, p=0.5, generator=g)
    share = (mixed.max(dim=1).values < 1).float().mean().item()
    assert 0.4 < share < 0.6


def test_background_noise_reaches_requested_snr():
    g = torch.Generator().manual_seed(0)
    noises = [torch.randn(3000, generator=g), 0.1 * torch.randn(500, generator=g)]  # one shorter than a clip: tiled
    augment = BackgroundNoise(noises, p=1.0).train()
    waves = torch.zeros(4, 1600)
    lengths = torch.tensor([1600, 1600, 1000, 800])
    for b in range(4):
        waves[b, : lengths[b]] = torch.sin(torch.arange(int(lengths[b])) * 0.05 * (b + 1))
    snr = torch.tensor([0.0, 5.0, 10.0, 20.0])
    noisy = augment(waves, lengths, generator=g, snr=snr)
    for b in range(4):
        n = int(lengths[b])
        measured = snr_db(waves[b, :n], noisy[b, :n] - waves[b, :n])
        assert measured.item() == pytest.approx(snr[b].item(), abs=1e-3)
        assert torch.all(noisy[b, n:] == 0)  # padding stays silent
    assert torch.equal(augment.eval()(waves, lengths), waves)


def test_background_noise_from_folder(tmp_path):
    import soundfile as sf

    (tmp_path / "_background_noise_").mkdir()
    sf.write(tmp_path / "_background_noise_" / "white.wav", torch.randn(8000).numpy() * 0.1, 8000)
    augment = BackgroundNoise.from_folder(tmp_path / "_background_noise_", sample_rate=16000, p=1.0)
    assert augment.num_recordings == 1 and augment.bank.numel() == 16000  # resampled 8 -> 16 kHz
    out = augment.train()(torch.ones(2, 100))
    assert not torch.equal(out, torch.ones(2, 100))


def test_equaliser_curves_stay_within_their_level_tilt_and_roll_off():
    from asit.augment import equaliser_curves

    max_db = 10.0
    curves = equaliser_curves(500, 128, max_db, torch.Generator().manual_seed(0))
    assert curves.shape == (500, 128)
    # level and tilt add at most 1.5 max_db anywhere; the roll-off only lowers, by up to 2 max_db
    assert curves.max() <= 1.5 * max_db + 1e-4 and curves.min() >= -3.5 * max_db - 1e-4
    lower_half = curves[:, :64]  # the cut-off is in the upper half: below it the curve is a straight line
    steps = lower_half.diff(dim=1)
    torch.testing.assert_close(steps, steps[:, :1].expand_as(steps), rtol=0, atol=1e-4)
    assert curves.std(0).min() > 1.0  # every bin moves from curve to curve
    assert len({tuple(c) for c in curves.tolist()}) == 500  # one curve per spectrogram


def test_random_equaliser_adds_its_curve_in_log_mel_units_and_in_normalised_units():
    from asit.augment import equaliser_curves, random_equaliser

    spec = torch.randn(6, 1, 20, 32)
    curves = equaliser_curves(6, 32, 8.0, torch.Generator().manual_seed(3))
    raw = random_equaliser(spec, 8.0, None, torch.Generator().manual_seed(3))
    # raw log-mel is the natural log of the energies: g dB multiplies the energy by 10^(g / 10)
    torch.testing.assert_close(torch.exp(raw - spec), (10 ** (curves / 10))[:, None, None, :].expand_as(spec), rtol=1e-4, atol=1e-5)
    normalised = random_equaliser(spec, 8.0, 4.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(normalised - spec, (raw - spec) / 8.0, rtol=1e-5, atol=1e-6)
    assert (raw - spec)[:, 0].std(dim=1).max() < 1e-5  # one curve a spectrogram, the same at every frame
    assert random_equaliser(spec, 0.0, None) is spec
    with pytest.raises(ValueError, match=r"\(N, 1, T, F\)"):
        random_equaliser(spec[:, 0], 8.0, None)


def test_frequency_warp_moves_a_spectral_peak_to_the_scaled_frequency():
    from torchaudio.compliance.kaldi import inverse_mel_scale, mel_scale

    from asit.augment import frequency_warp, warp_positions

    bins, rate = 128, 16_000
    low, high = mel_scale(torch.tensor(20.0)), mel_scale(torch.tensor(rate / 2))
    centres = inverse_mel_scale(low + (high - low) / (bins + 1) * torch.arange(1, bins + 1))
    torch.testing.assert_close(warp_positions(torch.ones(1), bins, rate)[0], torch.arange(bins).float(), rtol=0, atol=1e-3)
    peak = 40  # a formant-like bump at about 1 kHz
    spec = torch.exp(-0.5 * ((torch.arange(bins) - peak) / 1.5) ** 2).expand(3, 1, 7, bins).clone()
    factors = torch.tensor([1.0, 1.2, 1 / 1.2])
    warped = frequency_warp(spec, factors, rate)
    torch.testing.assert_close(warped[0], spec[0], rtol=0, atol=1e-3)
    for row, factor in zip(warped, factors):
        moved_to = centres[row[0, 0].argmax()]  # the bump's new centre, in Hz
        assert abs(moved_to / (centres[peak] * factor) - 1) < 0.03  # within a bin's width
    flat = torch.full((3, 1, 7, bins), -2.5)  # a padding frame stays what it was
    torch.testing.assert_close(frequency_warp(flat, factors, rate), flat, rtol=0, atol=1e-6)


def test_random_frequency_warp_draws_one_factor_per_spectrogram_within_its_bounds():
    from asit.augment import random_frequency_warp

    bins, peak = 128, 40
    spec = torch.exp(-0.5 * ((torch.arange(bins) - peak) / 1.5) ** 2).expand(400, 1, 3, bins).clone()
    warped = random_frequency_warp(spec, 0.25, 16_000, torch.Generator().manual_seed(0))
    peaks = warped[:, 0, 0].argmax(-1)
    assert (warped[:, 0].std(dim=1).max() < 1e-6)  # one factor a spectrogram, the same at every frame
    assert peaks.min() < peak - 3 and peaks.max() > peak + 3  # both lower and higher voices
    # a factor of 1.25 moves a 1 kHz bump 7 bins up, 1 / 1.25 6 bins down: never further
    assert peaks.min() >= peak - 7 and peaks.max() <= peak + 8
    again = random_frequency_warp(spec, 0.25, 16_000, torch.Generator().manual_seed(0))
    assert torch.equal(warped, again)
    assert random_frequency_warp(spec, 0.0, 16_000) is spec
    with pytest.raises(ValueError, match=r"\(N, 1, T, F\)"):
        random_frequency_warp(spec[:, 0], 0.25, 16_000)


def test_random_noise_floor_fills_the_quiet_frames_below_the_loudest_one():
    from asit.audio import NormStats
    from asit.augment import random_noise_floor

    raw = torch.full((200, 1, 10, 32), -20.0)  # silence ...
    raw[:, :, 3] = 2.0  # ... around one loud frame
    out = random_noise_floor(raw, 10.0, None, torch.Generator().manual_seed(0))
    assert (out >= raw - 1e-6).all()  # energy is only ever added
    # the loud frame barely moves: the floor is at least 10 dB under it, less the colouring's 7.5 dB
    lift = out[:, :, 3] - raw[:, :, 3]
    assert lift.max() <= np.log1p(10 ** -0.25) + 1e-5 and lift.median() < 0.05
    floor = out[:, 0, 0]  # (200, 32): each silent frame now holds its spectrogram's floor
    torch.testing.assert_close(out[:, 0, 9], floor, rtol=0, atol=1e-6)  # steady over time
    below_db = (2.0 - floor.mean(-1)) * 10 / np.log(10.0)  # how far under the loud frame, in dB
    assert below_db.min() > 10 - 7.5 and below_db.max() < 10 + 30 + 7.5  # the SNR range, +-the colouring
    assert below_db.max() - below_db.min() > 20  # the levels spread over the range
    assert len({tuple(row.tolist()) for row in floor}) == 200  # one floor per spectrogram
    stats = NormStats(-6.0, 4.0)
    normalised = random_noise_floor((raw + 6.0) / 8.0, 10.0, stats, torch.Generator().manual_seed(0))
    torch.testing.assert_close(normalised * 8.0 - 6.0, out, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(N, 1, T, F\)"):
        random_noise_floor(raw[:, 0], 10.0, None)
