"""Group masking (asit.masking): fractions, alignment, corruptions, reproducibility, exactness."""

import warnings

import pytest
import torch

import asit.masking as masking
from asit.masking import MaskingConfig, fraction_bounds, group_mask, masked_fraction, reference_group_mask_loop

T, F = 592, 128


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _batch(b=8, t=T, f=F, seed=0):
    return torch.randn(b, 1, t, f, generator=_gen(seed))


@pytest.mark.parametrize(
    "cfg",
    [
        MaskingConfig(),
        MaskingConfig(align="patch"),
        MaskingConfig(min_fraction=0.5, max_fraction=0.5),
        MaskingConfig(shape="time"),
        MaskingConfig(shape="freq", align="patch"),
        MaskingConfig(swap_prob=0.5, corruption="zeros"),
    ],
    ids=["pixel", "patch", "later-0.5", "time", "freq-patch", "swap-route"],
)
def test_masked_fraction_within_documented_bounds(cfg):
    x = _batch(16)
    _, mask = group_mask(x, cfg, _gen(1))
    assert mask.shape == x.shape and mask.dtype == torch.bool
    low, high = fraction_bounds(cfg, T, F)
    frac = masked_fraction(mask)
    assert (frac >= low).all(), frac
    assert (frac < high).all(), frac


def test_target_is_reached_and_overshoot_is_at_most_one_block():
    # min == max: every sample covers at least the target, and at most the target plus one block.
    cfg = MaskingConfig(min_fraction=0.6, max_fraction=0.6)
    _, mask = group_mask(_batch(32), cfg, _gen(2))
    frac = masked_fraction(mask)
    one_block = int(0.3 * T) * int(0.3 * F) / (T * F)
    assert (frac >= 0.6).all() and (frac < 0.6 + one_block).all()


def test_matches_shortest_run_of_its_blocks(monkeypatch):
    """The mask is exactly the union of the shortest run of drawn blocks reaching each target."""
    drawn, targets = [], []
    draw, cover = masking._draw_blocks, masking._cover
    monkeypatch.setattr(masking, "_draw_blocks", lambda *a: drawn.append(draw(*a)) or drawn[-1])
    monkeypatch.setattr(masking, "_cover", lambda n, t, *a: targets.append(t.clone()) or cover(n, t, *a))
    cfg = MaskingConfig(min_fraction=0.3, max_fraction=0.5, align="pixel")  # one round suffices
    _, mask = group_mask(_batch(6), cfg, _gen(3))
    assert len(drawn) == 1
    r0, r1, c0, c1 = drawn[0]
    for i in range(6):
        naive = torch.zeros(T, F, dtype=torch.bool)
        for k in range(r0.shape[1]):
            if naive.sum() >= targets[0][i]:
                break
            naive[r0[i, k] : r1[i, k], c0[i, k] : c1[i, k]] = True
        assert torch.equal(mask[i, 0], naive)


def test_later_rounds_when_one_round_is_not_enough(monkeypatch):
    # Blocks of at most 2 x 2 pixels: half of 20 x 20 takes far more than BLOCKS_PER_ROUND blocks.
    rounds = []
    first_cover = masking._first_cover
    monkeypatch.setattr(masking, "_first_cover", lambda blocks, grid: rounds.append(blocks[0].shape[0]) or first_cover(blocks, grid))
    cfg = MaskingConfig(min_fraction=0.5, max_fraction=0.5, max_block=(0.1, 0.1))
    _, mask = group_mask(torch.zeros(3, 1, 20, 20), cfg, _gen(4))
    assert len(rounds) >= 2
    frac = masked_fraction(mask)
    assert (frac >= 0.5).all() and (frac < 0.5 + 4 / 400).all()


def test_patch_alignment_masks_whole_patches():
    cfg = MaskingConfig(align="patch", patch_size=16)
    _, mask = group_mask(_batch(8), cfg, _gen(5))
    patches = mask[:, 0].reshape(8, T // 16, 16, F // 16, 16).float()  # (B, gT, 16, gF, 16)
    per_patch = patches.mean(dim=(2, 4))
    assert ((per_patch == 0) | (per_patch == 1)).all()


@pytest.mark.parametrize("align", ["pixel", "patch"])
def test_single_block_is_a_rectangle_within_the_size_limit(align):
    # A tiny target is reached by the first block alone.
    cfg = MaskingConfig(min_fraction=1e-4, max_fraction=1e-4, align=align)
    _, mask = group_mask(_batch(16), cfg, _gen(6))
    max_h, max_w = int(0.3 * T), int(0.3 * F)
    for m in mask[:, 0]:
        rows, cols = m.any(1).nonzero().squeeze(1), m.any(0).nonzero().squeeze(1)
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert m.sum() == h * w  # the mask fills its bounding box: one rectangle
        assert h <= max_h and w <= max_w
        if align == "patch":
            assert rows[0] % 16 == 0 and cols[0] % 16 == 0


def test_time_and_freq_bands_span_the_other_axis():
    x = _batch(4)
    _, mask = group_mask(x, MaskingConfig(shape="time"), _gen(7))
    rows = mask[:, 0].float().mean(2)  # (B, T)
    assert ((rows == 0) | (rows == 1)).all()
    _, mask = group_mask(x, MaskingConfig(shape="freq"), _gen(7))
    cols = mask[:, 0].float().mean(1)  # (B, F)
    assert ((cols == 0) | (cols == 1)).all()


def test_zeros_corruption_and_untouched_pixels():
    x = _batch(4)
    corrupted, mask = group_mask(x, MaskingConfig(), _gen(8))
    assert torch.equal(corrupted[~mask], x[~mask])
    assert (corrupted[mask] == 0).all()
    assert not torch.equal(corrupted, x)


def test_noise_corruption_is_in_normalised_units():
    x = torch.full((4, 1, T, F), 5.0)
    corrupted, mask = group_mask(x, MaskingConfig(corruption="noise", noise_std=0.5), _gen(9))
    noise = corrupted[mask]
    assert torch.equal(corrupted[~mask], x[~mask])
    assert abs(noise.mean().item()) < 0.01
    assert abs(noise.std().item() - 0.5) < 0.01


@pytest.mark.parametrize("batch", [2, 5])
def test_swap_takes_the_region_of_another_clip(batch):
    # Identical content except the clip's own index: the donor is never the clip itself.
    x = torch.arange(batch, dtype=torch.float32)[:, None, None, None].expand(batch, 1, 64, 32).clone()
    for seed in range(5):
        corrupted, mask = group_mask(x, MaskingConfig(corruption="swap"), _gen(seed))
        for i in range(batch):
            pasted = corrupted[i][mask[i]]
            assert pasted.numel() > 0
            assert (pasted == pasted[0]).all()  # one donor for the clip
            assert pasted[0] != i
            if batch == 2:
                assert pasted[0] == 1 - i
            assert (corrupted[i][~mask[i]] == i).all()


def test_swap_route_probability_one_uses_swap_fraction():
    x = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 1, T, F).clone()
    cfg = MaskingConfig(swap_prob=1.0, swap_fraction=0.3)
    corrupted, mask = group_mask(x, cfg, _gen(10))
    frac = masked_fraction(mask)
    assert (frac >= 0.3).all() and (frac < 0.3 + 0.09 + 1e-3).all()
    for i in range(4):
        assert (corrupted[i][mask[i]] != i).all()


def test_swap_with_a_single_clip_falls_back_to_zeros():
    x = _batch(1)
    with pytest.warns(UserWarning, match="at least 2"):
        corrupted, mask = group_mask(x, MaskingConfig(corruption="swap"), _gen(11))
    assert mask.any() and (corrupted[mask] == 0).all()


def test_seeded_generator_reproduces_masks():
    x = _batch(4)
    cfg = MaskingConfig(corruption="noise")
    a = group_mask(x, cfg, _gen(12))
    b = group_mask(x, cfg, _gen(12))
    c = group_mask(x, cfg, _gen(13))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_input_is_not_modified_and_lengths_other_than_592_work():
    x = _batch(3, t=192)
    before = x.clone()
    corrupted, mask = group_mask(x, MaskingConfig(align="patch"), _gen(14))
    assert torch.equal(x, before) and corrupted.shape == x.shape


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError):
        MaskingConfig(min_fraction=0.8, max_fraction=0.7)
    with pytest.raises(ValueError):
        MaskingConfig(corruption="blur")


def test_reference_loop_agrees_in_distribution():
    """The slow per-sample loop and the vectorised version draw masks of the same statistics."""
    x = _batch(16, t=192)
    cfg = MaskingConfig()
    low, high = fraction_bounds(cfg, 192, F)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref_c, ref_m = reference_group_mask_loop(x, cfg, _gen(15))
    vec_c, vec_m = group_mask(x, cfg, _gen(15))
    ref_f, vec_f = masked_fraction(ref_m), masked_fraction(vec_m)
    assert (ref_f >= low).all() and (ref_f < high).all()
    assert abs(ref_f.mean() - vec_f.mean()) < 0.05
    assert (ref_c[ref_m] == 0).all() and torch.equal(ref_c[~ref_m], x[~ref_m])


@pytest.mark.parametrize("align", ["pixel", "patch"])
def test_sync_free_mode_keeps_the_fraction_bounds(align):
    """The GPU path (fixed rounds, no host synchronisation) masks like the CPU path."""
    from asit.masking import fraction_bounds, group_mask, masked_fraction

    cfg = MaskingConfig(align=align)
    x = torch.randn(64, 1, 96, 128)
    low, high = fraction_bounds(cfg, 96, 128)
    corrupted, mask = group_mask(x, cfg, torch.Generator().manual_seed(0), sync_free=True)
    fraction = masked_fraction(mask)
    assert (fraction >= low - 1e-9).all() and (fraction <= high + 1e-9).all()
    assert torch.equal(corrupted[~mask], x[~mask]) and (corrupted[mask] == 0).all()
    again = group_mask(x, cfg, torch.Generator().manual_seed(0), sync_free=True)[1]
    assert torch.equal(mask, again)
