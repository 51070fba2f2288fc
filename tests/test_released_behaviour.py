"""The `paper` preset behaves as the authors' released pretraining code (earlier revision).

Each test pins one released behaviour against a reference written here, in the test, from
reading the released code (Sara-Ahmed/ASiT: utils.py, data_transformations.py, dataloader.py,
vision_transformer.py); none of that code is copied. Our options are checked beside them, so a
test fails if a switch stops switching. The table in asit/README.md lists the same behaviours.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.stats import ks_2samp
from torchaudio.compliance import kaldi

from asit.audio import NormStats, samples_for_frames
from asit.clipping import clip_gradients_
from asit.config import OUR_OPTIONS, get_preset
from asit.datasets import AudioDataset
from asit.features import FbankFrontend
from asit.masking import MaskingConfig, fraction_bounds, group_mask, masked_fraction
from asit.models import build_asit
from asit.schedules import cosine_schedule

AUDIOSET = NormStats(mean=-4.2677393, std=4.5689974)  # the released command's --data_mean / --data_std


# ------------------------------------------------------------------ presets


def test_paper_preset_takes_every_released_setting_and_the_small_presets_ours():
    paper = get_preset("paper")
    assert (paper.sample_rate, paper.clip_mode, paper.schedule_end, paper.padding) == (32_000, "per_parameter", "released", "waveform")
    assert (paper.roll_once, paper.reconstruction_hidden_dim, paper.cls_token_std) == (True, 768, 0.02)
    assert paper.masking == MaskingConfig.released()
    assert (paper.masking.swap_prob, paper.masking.swap_fraction, paper.masking.donor) == (0.5, 0.3, "any")
    for name in ("smoke", "cpu", "gpu"):
        cfg = get_preset(name)
        assert cfg.sample_rate == 16_000 and cfg.clip_mode == "global_norm" and cfg.masking.swap_prob == 0
        assert set(OUR_OPTIONS) <= set(cfg.to_dict())


def test_paper_v2_is_the_later_revision():
    v2 = get_preset("paper_v2")
    assert (v2.sample_rate, v2.num_local_crops, v2.local_crop_frames) == (16_000, 4, 192)
    assert (v2.global_dim, v2.local_dim) == (8192, 8192)
    assert (v2.weight_global, v2.weight_local, v2.weight_reconstruction) == (0.5, 0.5, 1.0)
    assert v2.warmup_teacher_temp_epochs == 5
    assert (v2.masking.min_fraction, v2.masking.max_fraction) == (0.5, 0.5)
    assert v2.clip_mode == "per_parameter"  # what the later revision does not change stays released


# ------------------------------------------------------------------ gradient clipping


def _grads_with_norms(norms):
    model = torch.nn.Module()
    gen = torch.Generator().manual_seed(0)
    for i, norm in enumerate(norms):
        param = torch.nn.Parameter(torch.zeros(5 + i))
        g = torch.randn(param.shape, generator=gen)
        param.grad = g / g.norm() * norm
        model.register_parameter(f"p{i}", param)
    return model


def test_clipping_per_parameter_as_released_and_global_norm_as_our_option():
    norms = (10.0, 1.0, 0.1)
    model = _grads_with_norms(norms)
    before = [p.grad.clone() for p in model.parameters()]
    clip_gradients_(model, 3.0, "per_parameter")
    # released rule: each tensor on its own, scale = clip / (norm + 1e-6) when that is below 1
    for g0, p in zip(before, model.parameters()):
        scale = min(1.0, 3.0 / (g0.norm().item() + 1e-6))
        torch.testing.assert_close(p.grad, g0 * scale)
    assert [round(p.grad.norm().item(), 4) for p in model.parameters()] == [3.0, 1.0, 0.1]

    model = _grads_with_norms(norms)
    clip_gradients_(model, 3.0, "global_norm")
    total = math.sqrt(sum(n * n for n in norms))
    got = [p.grad.norm().item() for p in model.parameters()]
    assert got == pytest.approx([n * 3.0 / total for n in norms], rel=1e-4)  # about (2.99, 0.30, 0.03)


# ------------------------------------------------------------------ padding of short clips


def test_waveform_padding_gives_the_released_silent_frames():
    sr, num_frames = 32_000, 120
    gen = torch.Generator().manual_seed(1)
    clip = 0.1 * torch.randn(sr // 2, generator=gen)  # 0.5 s: 48 frames, the rest is padding
    clip = clip - clip.mean()
    wave = torch.nn.functional.pad(clip, (0, samples_for_frames(num_frames, sr) - clip.numel()))
    lengths = torch.tensor([clip.numel()])
    ours = FbankFrontend(num_frames, AUDIOSET, sample_rate=sr, padding="waveform")(wave[None], lengths)[0, 0]
    # released path: zero-pad the waveform, Kaldi fbank of the whole crop, normalise by 2 std
    raw = kaldi.fbank(wave[None], htk_compat=True, sample_frequency=sr, use_energy=False, window_type="hanning",
                      num_mel_bins=128, dither=0.0, frame_shift=10)[:num_frames]
    reference = (raw - AUDIOSET.mean) / (2 * AUDIOSET.std)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    silent = (math.log(torch.finfo(torch.float32).eps) - AUDIOSET.mean) / (2 * AUDIOSET.std)
    assert silent == pytest.approx(-1.2776, abs=1e-4)
    assert torch.allclose(ours[60:], torch.full_like(ours[60:], silent), atol=1e-5)
    fbank_padded = FbankFrontend(num_frames, AUDIOSET, sample_rate=sr, padding="fbank")(wave[None], lengths)[0, 0]
    assert fbank_padded[60:].mean().item() == pytest.approx(-AUDIOSET.mean / (2 * AUDIOSET.std), abs=1e-6)  # +0.467


# ------------------------------------------------------------------ model


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_reconstruction_head_is_768_wide_whatever_the_encoder():
    paper = get_preset("paper")
    model = build_asit("small", num_frames=32, global_dim=16, local_dim=16, depth=1,
                       reconstruction_hidden_dim=paper.reconstruction_hidden_dim)
    # released RECHead at ViT-S: 384 -> 768 -> 768 -> 128 (biases), then a 16 x 16 transposed conv to 1 channel
    released = (384 * 768 + 768) + (768 * 768 + 768) + (768 * 128 + 128) + (128 * 16 * 16 + 1)
    assert _count(model.reconstruction) == released == 1_017_473
    ours = build_asit("small", num_frames=32, global_dim=16, local_dim=16, depth=1, reconstruction_hidden_dim=0)
    assert _count(ours.reconstruction) == 377_729


def test_class_token_init_released_std():
    torch.manual_seed(0)
    released = build_asit("small", num_frames=32, global_dim=16, local_dim=16, depth=1, cls_token_std=0.02)
    assert released.encoder.cls_token.std().item() == pytest.approx(0.02, rel=0.15)
    timm_init = build_asit("small", num_frames=32, global_dim=16, local_dim=16, depth=1, cls_token_std=None)
    assert timm_init.encoder.cls_token.abs().max().item() < 1e-4


# ------------------------------------------------------------------ schedules


def test_released_cosine_schedule_values():
    base, final, epochs, n, warm = 1e-3, 1e-6, 6, 5, 2
    got = cosine_schedule(base, final, epochs, n, warmup_epochs=warm, end="released")
    # released: linspace(0, base, warm * n), then final + (base - final) / 2 * (1 + cos(pi * i / N)), i < N
    N = (epochs - warm) * n
    assert got[0] == 0.0
    assert got[warm * n - 1] == pytest.approx(base)  # end of the warm-up
    assert got[warm * n] == pytest.approx(base)  # first cosine step
    last = final + 0.5 * (base - final) * (1 + math.cos(math.pi * (N - 1) / N))
    assert got[-1] == pytest.approx(last, rel=1e-12) and got[-1] > final  # one step short of final
    assert cosine_schedule(base, final, epochs, n, warmup_epochs=warm, end="exact")[-1] == pytest.approx(final)


# ------------------------------------------------------------------ group masking


def _released_mask_fractions(count, T, F, seed):
    """The released pipeline's masks, per sample, written from data_transformations.py and utils.py.

    Per view: a mask of target U(0.5, 0.7) * T * F from blocks with numpy-style exclusive upper
    bounds; then (collate) with probability 1/2 the sample instead gets a fresh mask of target
    0.3 * T * F, pasted from a random clip of the batch.
    """
    rng = np.random.default_rng(seed)
    max_h, max_w = int(T * 0.3), int(F * 0.3)

    def one_mask(target):
        mask = np.zeros((T, F), bool)
        while mask.sum() < target:
            r, c = rng.integers(0, T - 1), rng.integers(0, F - 1)  # corners: never the last row / column
            h, w = rng.integers(1, max_h), rng.integers(1, max_w)  # sizes: max_h - 1, max_w - 1 at most
            mask[r : r + h, c : c + w] = True
        return mask

    out = []
    for _ in range(count):
        mask = one_mask(rng.uniform(0.5, 0.7) * T * F)
        if rng.random() < 0.5:
            mask = one_mask(0.3 * T * F)
        out.append(mask.mean())
    return np.array(out)


def test_paper_masked_fraction_distribution_matches_the_released_pipeline():
    T, F, count = 64, 48, 400
    released = _released_mask_fractions(count, T, F, seed=0)
    x = torch.zeros(count, 1, T, F)
    ours = masked_fraction(group_mask(x, get_preset("paper").masking, torch.Generator().manual_seed(0), views=2)[1]).numpy()
    assert ks_2samp(released, ours).pvalue > 0.01
    no_swap = masked_fraction(group_mask(x, MaskingConfig(), torch.Generator().manual_seed(0), views=2)[1]).numpy()
    assert ks_2samp(released, no_swap).pvalue < 1e-6  # the swap route is what moves the distribution


def _single_blocks(cfg, T, F, n=800):
    # a target of one pixel: each mask is exactly one (edge-clipped) block
    cfg = MaskingConfig(**{**cfg.__dict__, "min_fraction": 1e-9, "max_fraction": 1e-9, "swap_prob": 0.0})
    m = group_mask(torch.zeros(n, 1, T, F), cfg, torch.Generator().manual_seed(3))[1][:, 0]
    any_row, any_col = m.any(2), m.any(1)  # (n, T), (n, F)
    return any_row.sum(1), any_col.sum(1), any_row.float().argmax(1), any_col.float().argmax(1)


def test_released_block_bounds():
    T, F = 50, 40  # 30 % of each: 15 x 12 pixels
    h, w, r, c = _single_blocks(MaskingConfig.released(), T, F)
    # released: randint(1, int(0.3 * T)) excludes its upper end; corners randint(0, T - 1) never the last row
    assert (h.max().item(), w.max().item()) == (14, 11)
    assert (r.max().item(), c.max().item()) == (T - 2, F - 2)
    h, w, r, c = _single_blocks(MaskingConfig(), T, F)  # ours: the stated maxima and the last row are reachable
    assert (h.max().item(), w.max().item()) == (15, 12)
    assert (r.max().item(), c.max().item()) == (T - 1, F - 1)
    # at 592 x 128 the largest released block is 176 x 37 pixels (ours 177 x 38)
    assert fraction_bounds(MaskingConfig.released(), 592, 128)[1] == pytest.approx(0.7 + 176 * 37 / (592 * 128))
    assert fraction_bounds(MaskingConfig(), 592, 128)[1] == pytest.approx(0.7 + 177 * 38 / (592 * 128))


def test_swap_donor_is_any_clip_of_the_same_view_as_released():
    views, batch = 2, 4
    x = torch.arange(views * batch, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 16, 16).contiguous()
    donors = {"any": set(), "other_clip": set()}
    for mode in donors:
        cfg = MaskingConfig(corruption="swap", donor=mode)
        for seed in range(12):
            corrupted, mask = group_mask(x, cfg, torch.Generator().manual_seed(seed), views=views)
            for row in range(views * batch):
                donors[mode].add((row, int(corrupted[row][mask[row]][0].item())))
    for mode, pairs in donors.items():
        assert all(row // batch == donor // batch for row, donor in pairs)  # the donor is the same view
    assert any(row == donor for row, donor in donors["any"])  # released: the clip itself can be drawn
    assert all(row != donor for row, donor in donors["other_clip"])


# ------------------------------------------------------------------ roll order


def test_roll_once_cuts_both_crops_from_one_roll(tmp_path):
    sr = 16_000
    path = tmp_path / "clip.wav"
    sf.write(path, np.random.default_rng(0).standard_normal(sr).astype(np.float32) * 0.1, sr)

    def views(roll_once):
        data = AudioDataset([path], [-1], [], name="t", split="train", num_frames=98, roll_prob=1.0,
                            num_views=2, roll_once=roll_once, seed=0, stats=AUDIOSET, sample_rate=sr)
        return data[0]["wave"]

    once = views(True)  # the clip fits one crop: with one roll both views are the same samples
    torch.testing.assert_close(once[0], once[1])
    apart = views(False)
    assert not torch.equal(apart[0], apart[1])


@pytest.mark.parametrize("mode", ["per_parameter", "global_norm"])
def test_the_training_step_clips_with_the_configured_rule(mode):
    from asit import engine_pretrain

    clip = 1e-3  # small enough to bite on every tensor of the smoke model
    cfg = get_preset("smoke", clip_mode=mode, clip_grad=clip, drop_path_rate=0.0)
    state = engine_pretrain.build_training(cfg, "cpu", stats=None, steps_per_epoch=1)
    frontend = FbankFrontend(cfg.num_frames, None)
    waves = torch.randn(4, 2, frontend.num_samples, generator=torch.Generator().manual_seed(0))
    engine_pretrain.train_step(state, waves, torch.full((4, 2), frontend.num_samples), 0)
    norms = torch.stack([p.grad.norm() for p in state.student.parameters() if p.grad is not None])
    if mode == "per_parameter":  # every tensor on its own at most the threshold, most of them on it
        assert norms.max() <= clip * (1 + 1e-4) and (norms > 0.99 * clip).sum() > len(norms) // 2
    else:  # one norm over all gradients
        assert norms.norm() <= clip * (1 + 1e-4) and (norms > 0.99 * clip).sum() <= 1
