"""Group masking (GMML): corrupt large connected groups of spectrogram pixels, batched on device.

ASiT's first training signal (Atito et al., "ASiT: Local-Global Audio Spectrogram vIsion
Transformer", arXiv 2211.13189; GMML from Atito et al., "SiT: Self-supervised vIsion
Transformer", arXiv 2104.03602): per view, pick a target fraction of the spectrogram, drop random
rectangles on it until the target is covered, and ask the student to reconstruct the clean pixels
under the mask.

API
---
- :class:`MaskingConfig`: every knob. ``MaskingConfig()`` holds our training choices;
  :meth:`MaskingConfig.released` the released code's (the ``paper`` preset's).
- :func:`group_mask` ``(x (V*B,1,T,F), cfg, generator=None, views=1) -> (corrupted, mask bool)``:
  the training path, batched and vectorised on the batch's device.
- :func:`masked_fraction` ``(mask) -> (B,)``.
- :func:`reference_group_mask_loop`: the released algorithm as a plain per-sample Python loop. The
  slow reference for notebooks and benchmarks; never used in training.

Semantics (both implementations)
--------------------------------
For each sample a target fraction ``f ~ U[min_fraction, max_fraction]`` is drawn; rectangles are
added one at a time (overlaps allowed) until at least ``f * T * F`` pixels are covered. The target
is a *lower bound*: the block that crosses it is kept whole, so the masked fraction lies in
``[f, f + largest block area)``, i.e. in ``[min_fraction, max_fraction + max_block[0] * max_block[1])``
(:func:`fraction_bounds`). A block's height is uniform in ``1 .. floor(max_block[0] * T / a)`` units
of ``a`` pixels (``a = 1`` for ``align="pixel"``, ``patch_size`` for ``"patch"``), likewise its
width; its corner is uniform over the aligned positions and it is clipped at the spectrogram's
edge. With ``block_bounds="released"`` the upper bounds are exclusive, as numpy's ``randint``
made them in the released code: heights ``1 .. floor(max_block[0] * T / a) - 1``, corners never
on the last row or column (at 592 x 128: blocks of at most 176 x 37 pixels, corners up to
(590, 126)); ``"full"`` includes them (blocks up to 177 x 38, corners anywhere).

How the vectorised version works
--------------------------------
The released loop adds one block at a time and recounts the mask after each (tens of blocks per
sample, in a Python loop over the batch). We reach the same result with a fixed number of tensor
operations over the whole batch:

1. Draw ``K = 62`` candidate blocks per sample at once: ``(B, K)`` corners and sizes.
2. Compress time: a sample's coverage only changes at its blocks' top and bottom edges, so its rows
   fall into ``2K + 1`` segments (some empty) between the sorted edges; work per (segment,
   column) cell, weighted by the segment's height (about 5 times fewer cells than pixels).
3. Give block ``k`` the weight ``2**k`` and paint all blocks with a 2-D *difference array*: add
   ``+w`` / ``-w`` at the four corners of each rectangle (``4 * B * K`` scattered values), then
   ``cumsum`` over both axes. Every cell ends up holding ``sum(2**k)`` over the blocks covering
   it, i.e. the bit set of its covering blocks, exact in int64.
4. The lowest set bit (``v & -v``) is the *first* block covering each cell. The coverage of the
   first ``k`` blocks is the weight of the cells whose first block is ``< k``: one weighted
   histogram per sample and a ``cumsum`` over ``k`` give the coverage of every prefix at once.
5. Per sample keep the shortest prefix that reaches the target (``mask = first_block < k*``,
   expanded back to rows). A sample that 62 blocks do not cover takes another round of 62 blocks
   on top of its mask (about a quarter of the samples at a 0.7 target with pixel-aligned blocks).

The result is exactly the released semantics (the tests rebuild a mask block by block from the
drawn blocks); only the random stream differs. ``align="patch"`` works on the grid of 16 x 16
cells (256 times fewer cells) and expands at the end. Measured on one CPU thread, B = 32, 592 x
128: a few times faster than the loop with pixel blocks, over ten times with patch blocks; on a
GPU it is a few dozen kernel launches instead of thousands of small ones.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "MaskingConfig",
    "group_mask",
    "masked_fraction",
    "fraction_bounds",
    "reference_group_mask_loop",
    "BLOCKS_PER_ROUND",
]

# Candidate blocks painted per round: block k carries the bit 2**k of an int64; 62 bits plus the
# sentinel bit 62 keep every partial sum of the difference array inside the int64 range. At the
# default settings a sample needs about 30 to 70 pixel-aligned blocks (fewer patch-aligned ones).
BLOCKS_PER_ROUND = 62
# Rounds of BLOCKS_PER_ROUND blocks in the sync-free mode. Measured over 2,000 masks at the
# default settings on 592 x 128: one round left 2 pixel-aligned masks short of their target, two
# rounds none; three leave a wide margin.
SYNC_FREE_ROUNDS = 3
_MAX_ROUNDS = 1000  # a guard against a configuration that can never reach its target


@dataclass
class MaskingConfig:
    """Group masking settings: our training choices; :meth:`released` gives the released code's."""

    # Per sample the target masked fraction is drawn uniformly in [min_fraction, max_fraction].
    # Earlier revision: 0.5 / 0.7; the later revision fixes it at 0.5 / 0.5.
    min_fraction: float = 0.5
    max_fraction: float = 0.7
    # Largest block height and width as fractions of the time and mel axes.
    max_block: tuple[float, float] = (0.3, 0.3)
    # "pixel": blocks start and end on any pixel (the released default, --drop_align 1);
    # "patch": edges on multiples of patch_size, so every ViT patch is fully masked or untouched.
    align: Literal["pixel", "patch"] = "pixel"
    # Patch size of the ViT (used by align="patch").
    patch_size: int = 16
    # "blocks": rectangles; "time": bands over all mel bins; "freq": bands over all frames.
    shape: Literal["blocks", "time", "freq"] = "blocks"
    # What replaces masked pixels: "zeros" (default), "noise" (Gaussian, mean 0, std noise_std), or
    # "swap" (the same region of another clip of the batch, never the clip itself).
    corruption: Literal["zeros", "noise", "swap"] = "zeros"
    # Std of the "noise" corruption, in normalised units (the inputs are already normalised; the
    # released code wrongly used the raw data set mean/std here).
    noise_std: float = 1.0
    # The released code's extra route: with this probability a sample *instead* gets a fresh mask
    # of exactly swap_fraction, filled from another clip of the batch (released: 0.5 and 0.3 via
    # --drop_replace 0.3). 0 switches the route off, which is our default.
    swap_prob: float = 0.0
    # Target fraction of that route (a lower bound, as above).
    swap_fraction: float = 0.3
    # "full": block sizes and corners up to the stated maxima; "released": numpy's exclusive upper
    # bounds as in the released code (one pixel / cell less on each, see the module docstring).
    block_bounds: Literal["full", "released"] = "full"
    # Whose pixels a swapped sample receives: "other_clip" (another clip, the same view index) or
    # "any" (any clip of the same view index, itself included, as released: a self-donor leaves
    # the pixels unchanged yet counts them as masked).
    donor: Literal["other_clip", "any"] = "other_clip"

    @classmethod
    def released(cls, **overrides) -> "MaskingConfig":
        """The released pretraining command's masking (earlier revision): ``--drop_perc 0.7``,
        ``--drop_replace 0.3`` (so half the samples take the swap route), ``--drop_align 1``,
        ``--drop_type zeros``, blocks up to 30 %, numpy's bounds, any donor."""
        settings = dict(min_fraction=0.5, max_fraction=0.7, max_block=(0.3, 0.3), align="pixel", shape="blocks",
                        corruption="zeros", swap_prob=0.5, swap_fraction=0.3, block_bounds="released", donor="any")
        return cls(**{**settings, **overrides})

    def __post_init__(self):
        if not 0.0 <= self.min_fraction <= self.max_fraction <= 1.0:
            raise ValueError(f"need 0 <= min_fraction <= max_fraction <= 1, got {self.min_fraction}, {self.max_fraction}")
        if not 0.0 <= self.swap_fraction <= 1.0 or not 0.0 <= self.swap_prob <= 1.0:
            raise ValueError("swap_prob and swap_fraction must lie in [0, 1]")
        if len(self.max_block) != 2 or not all(0.0 < b <= 1.0 for b in self.max_block):
            raise ValueError(f"max_block must be two fractions in (0, 1], got {self.max_block}")
        if self.align not in ("pixel", "patch"):
            raise ValueError(f"align must be 'pixel' or 'patch', got {self.align!r}")
        if self.shape not in ("blocks", "time", "freq"):
            raise ValueError(f"shape must be 'blocks', 'time' or 'freq', got {self.shape!r}")
        if self.corruption not in ("zeros", "noise", "swap"):
            raise ValueError(f"corruption must be 'zeros', 'noise' or 'swap', got {self.corruption!r}")
        if self.block_bounds not in ("full", "released"):
            raise ValueError(f"block_bounds must be 'full' or 'released', got {self.block_bounds!r}")
        if self.donor not in ("other_clip", "any"):
            raise ValueError(f"donor must be 'other_clip' or 'any', got {self.donor!r}")
        self.max_block = tuple(self.max_block)

    @property
    def cell(self) -> int:
        """Alignment unit in pixels."""
        return self.patch_size if self.align == "patch" else 1


def masked_fraction(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of masked pixels per sample: ``(B, ...) -> (B,)`` float."""
    return mask.flatten(1).float().mean(dim=1)


def _max_units(fraction: float, size: int, cell: int, bounds: str = "full") -> int:
    # Largest block side in cells: floor(fraction * size) pixels rounded down to whole cells;
    # one less with the released (exclusive) bound.
    units = int(fraction * size) // cell
    return max(1, units - 1 if bounds == "released" else units)


def _corner_cells(grid: tuple[int, int], bounds: str) -> tuple[int, int]:
    # Number of possible block corners per axis: every cell, or all but the last (released).
    return tuple(max(1, g - 1) if bounds == "released" else g for g in grid)


def fraction_bounds(cfg: MaskingConfig, num_frames: int, num_mel_bins: int) -> tuple[float, float]:
    """The documented range of :func:`masked_fraction` for this config and input size.

    Lower: the smallest target. Upper (exclusive): the largest target plus the largest block (the
    block that crosses the target is kept whole).
    """
    c = cfg.cell
    h = _max_units(cfg.max_block[0], num_frames, c, cfg.block_bounds) * c if cfg.shape != "freq" else num_frames
    w = _max_units(cfg.max_block[1], num_mel_bins, c, cfg.block_bounds) * c if cfg.shape != "time" else num_mel_bins
    low = min(cfg.min_fraction, cfg.swap_fraction) if cfg.swap_prob > 0 else cfg.min_fraction
    high = max(cfg.max_fraction, cfg.swap_fraction) if cfg.swap_prob > 0 else cfg.max_fraction
    return low, min(1.0, high + h * w / (num_frames * num_mel_bins))


def _rand(shape, generator, device) -> torch.Tensor:
    # Draw on the generator's device (CPU unless the caller passes a device generator), then move:
    # the same seed gives the same masks whatever device the batch is on.
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _draw_blocks(n: int, grid: tuple[int, int], units: tuple[int, int], cfg: MaskingConfig, generator, device):
    """``n`` x ``K`` blocks as cell-index corners ``(r0, r1, c0, c1)``, each ``(n, K)`` int64, ends exclusive."""
    gT, gF = grid
    corners = _corner_cells(grid, cfg.block_bounds)
    u = _rand((4, n, BLOCKS_PER_ROUND), generator, device)  # (4, n, K)
    r0 = (u[0] * corners[0]).long()
    c0 = (u[1] * corners[1]).long()
    h = 1 + (u[2] * units[0]).long()
    w = 1 + (u[3] * units[1]).long()
    if cfg.shape == "time":
        c0, w = torch.zeros_like(c0), torch.full_like(w, gF)
    elif cfg.shape == "freq":
        r0, h = torch.zeros_like(r0), torch.full_like(h, gT)
    return r0, (r0 + h).clamp_max(gT), c0, (c0 + w).clamp_max(gF)


def _first_cover(blocks, grid: tuple[int, int]):
    """First block covering each cell, on a grid compressed along time.

    The rows of a sample only change coverage at its blocks' top and bottom edges, so the rows are
    grouped into ``S = 2K + 1`` segments between consecutive edges (some empty) and everything is
    computed per (segment, column): about 5 times fewer cells than pixels at 592 x 128.

    Returns:
        ``first`` ``(n, S, gF)`` int64, the index of the first block covering the cell, ``K`` where
        none does; ``edges`` ``(n, S + 1)`` int64, segment ``s`` holds rows ``edges[s] .. edges[s+1]-1``.
    """
    r0, r1, c0, c1 = blocks  # (n, K) each, in cells, ends exclusive
    n, K = r0.shape
    gT, gF = grid
    device = r0.device
    edges = torch.cat([r0.new_zeros(n, 1), r0, r1, r0.new_full((n, 1), gT)], 1).sort(1).values  # (n, S+1)
    S = edges.shape[1] - 1
    # A block covers the segments s0 .. s1-1: from the (last) segment starting at r0 to the one at r1.
    s0 = torch.searchsorted(edges, r0, right=True) - 1  # (n, K)
    s1 = torch.searchsorted(edges, r1, right=True) - 1

    # Block k carries the bit 2**k. A 2-D difference array: +w at (s0, c0) and (s1, c1), -w at
    # (s0, c1) and (s1, c0); corners on the far edges (s1 == S or c1 == gF) fall outside: dropped.
    bit = (torch.ones(K, dtype=torch.int64, device=device) << torch.arange(K, device=device)).expand(n, K)
    rows, cols = torch.cat([s0, s0, s1, s1], 1), torch.cat([c0, c1, c0, c1], 1)  # (n, 4K)
    values = torch.cat([bit, -bit, -bit, bit], 1).masked_fill((rows >= S) | (cols >= gF), 0)
    index = torch.arange(n, device=device)[:, None] * (S * gF) + rows.clamp_max(S - 1) * gF + cols.clamp_max(gF - 1)
    bits = torch.zeros(n, S, gF, dtype=torch.int64, device=device)
    bits.view(-1).index_put_((index.reshape(-1),), values.reshape(-1), accumulate=True)
    bits = bits.cumsum_(2).cumsum_(1)  # (n, S, gF): the bit set of each cell's covering blocks
    bits |= 1 << K  # a sentinel bit K: the "first block" of an uncovered cell reads as K
    lowest = torch.neg(bits)
    lowest &= bits  # the lowest set bit, 2**(first covering block)
    # log2 of an exact power of two, read from the exponent field of its float32 (exact, any device).
    first = lowest.float().view(torch.int32)
    first >>= 23
    first -= 127
    return first.long(), edges


def _cover(n: int, targets: torch.Tensor, grid, units, row_w, col_w, cfg: MaskingConfig, generator, device, sync_free: bool = False):
    """Cell masks ``(n, gT, gF)`` bool: per sample the shortest run of blocks whose coverage (in
    pixels, cells weighted by ``row_w (gT,)`` x ``col_w (gF,)``) reaches ``targets (n,)``.

    ``sync_free``: run a fixed :data:`SYNC_FREE_ROUNDS` rounds over every sample instead of looping
    while some sample is short of its target, so the host never waits for the device (on a GPU,
    each ``todo[~done]`` would). Samples already done ignore the later rounds' blocks.
    """
    gT, gF = grid
    K = BLOCKS_PER_ROUND
    covered = torch.zeros(n, gT, gF, dtype=torch.bool, device=device)
    have = torch.zeros(n, dtype=torch.int64, device=device)  # covered pixels so far
    finished = torch.zeros(n, dtype=torch.bool, device=device)  # sync_free only: target reached
    todo = torch.arange(n, device=device)
    row_cum = torch.cat([row_w.new_zeros(1), row_w.cumsum(0)])  # (gT+1,) pixel rows above each cell row
    rows = torch.arange(gT, device=device)
    for round_ in range(SYNC_FREE_ROUNDS if sync_free else _MAX_ROUNDS):
        m = todo.numel()
        if m == 0:
            return covered
        first, edges = _first_cover(_draw_blocks(m, grid, units, cfg, generator, device), grid)  # (m, S, gF), (m, S+1)
        S = first.shape[1]
        seg_rows = row_cum[edges[:, 1:]] - row_cum[edges[:, :-1]]  # (m, S) pixel rows per segment
        weight = seg_rows[:, :, None] * col_w  # (m, S, gF) pixels per (segment, column) cell
        if round_ > 0:  # a later round: pixels masked in earlier rounds do not count again
            old = covered[todo].long() * (row_w[:, None] * col_w)  # (m, gT, gF) masked pixels per cell
            old = torch.cat([old.new_zeros(m, 1, gF), old.cumsum(1)], 1)  # (m, gT+1, gF)
            at = lambda e: old.gather(1, e[:, :, None].expand(-1, -1, gF))  # noqa: E731
            weight = weight - (at(edges[:, 1:]) - at(edges[:, :-1]))
        hist = torch.zeros(m, K + 1, dtype=torch.int64, device=device)
        hist.scatter_add_(1, first.view(m, -1), weight.reshape(m, -1))  # (m, K+1): new pixels first hit by block k
        reach = have[todo, None] + hist[:, :K].cumsum(1)  # (m, K): coverage by blocks 0 .. k
        ok = reach >= targets[todo, None]
        done = ok.any(1)
        k_star = torch.where(done, ok.float().argmax(1) + 1, K)  # (m,) shortest run reaching the target
        keep = first < k_star[:, None, None]  # (m, S, gF)
        row_seg = torch.searchsorted(edges, rows.expand(m, gT).contiguous(), right=True) - 1  # (m, gT)
        new = keep[torch.arange(m, device=device)[:, None], row_seg]  # (m, gT, gF): back to cell rows
        reached = reach.gather(1, (k_star - 1)[:, None]).squeeze(1)  # (m,)
        if sync_free:  # todo is every sample; the ones finished earlier keep their mask
            covered = covered | (new & ~finished[:, None, None])
            have = torch.where(finished, have, reached)
            finished = finished | done
            continue
        if round_ == 0:
            covered = new
        else:
            covered[todo] |= new
        have[todo] = reached
        todo = todo[~done]
    if sync_free:
        return covered
    raise RuntimeError("group_mask: the targets were not reached after many rounds; check the MaskingConfig")


def _donors(rows: int, views: int, mode: str, generator, device) -> torch.Tensor:
    """A donor row for each of ``rows = views * B`` view-major rows, from the same view's ``B`` rows.

    ``"other_clip"``: shift the clip index by 1 .. B-1 (mod B), a uniformly random other clip;
    ``"any"``: a uniformly random clip of the view, the clip itself included (released).
    """
    batch = rows // views
    u = _rand((rows,), generator, device)
    clip = torch.arange(rows, device=device) % batch
    if mode == "any":
        pick = (u * batch).long().clamp_max(batch - 1)
    else:
        pick = (clip + 1 + (u * (batch - 1)).long()) % batch
    return torch.arange(rows, device=device) - clip + pick


@torch.no_grad()
def group_mask(
    x: torch.Tensor,
    cfg: MaskingConfig | None = None,
    generator: torch.Generator | None = None,
    sync_free: bool | None = None,
    views: int = 1,
):
    """Group-mask a batch of spectrograms on its own device.

    Args:
        x: ``(V*B, 1, T, F)`` normalised spectrograms (the clean views; not modified), view-major:
            rows ``v*B .. (v+1)*B - 1`` hold view ``v`` of every clip.
        cfg: masking settings (default :class:`MaskingConfig`).
        generator: optional ``torch.Generator``; the same seed gives the same masks. Random numbers
            are drawn on the generator's device (CPU by default) and moved to ``x.device``.
        views: ``V``; a swapped row takes its pixels from a row of the same view (as released,
            where each view's batch is corrupted on its own).

    Returns:
        ``(corrupted, mask)``: ``corrupted`` ``(B, 1, T, F)`` like ``x`` with the masked pixels
        replaced, ``mask`` ``(B, 1, T, F)`` bool, True where corrupted.

    With ``corruption="swap"`` (or ``swap_prob > 0``), ``donor="other_clip"`` and one clip per
    view, there is no other clip to copy from: those samples fall back to zeros, with a warning.

    ``sync_free`` (default: on any device but the CPU) draws a fixed number of block rounds so the
    host never waits for the device; on the CPU the loop stops as soon as every sample is covered.
    """
    cfg = cfg or MaskingConfig()
    if x.dim() != 4:
        raise ValueError(f"group_mask expects (B, C, T, F), got {tuple(x.shape)}")
    B, _, T, F = x.shape
    if views < 1 or B % views:
        raise ValueError(f"group_mask: {B} rows do not split into {views} views")
    device = x.device
    c = cfg.cell
    grid = (math.ceil(T / c), math.ceil(F / c))
    units = (_max_units(cfg.max_block[0], T, c, cfg.block_bounds), _max_units(cfg.max_block[1], F, c, cfg.block_bounds))
    # Pixels per cell row / column: c, less on the last one when T or F is not a multiple of c.
    row_w = (torch.clamp(T - torch.arange(grid[0], device=device) * c, max=c)).long()  # (gT,)
    col_w = (torch.clamp(F - torch.arange(grid[1], device=device) * c, max=c)).long()  # (gF,)

    fraction = cfg.min_fraction + (cfg.max_fraction - cfg.min_fraction) * _rand((B,), generator, device)  # (B,)
    route = _rand((B,), generator, device) < cfg.swap_prob  # (B,) the released code's paste route
    fraction = torch.where(route, torch.full_like(fraction, cfg.swap_fraction), fraction)
    if sync_free is None:
        sync_free = device.type != "cpu"
    cells = _cover(B, fraction * (T * F), grid, units, row_w, col_w, cfg, generator, device, sync_free)  # (B, gT, gF)
    if c > 1:
        cells = cells.repeat_interleave(c, 1).repeat_interleave(c, 2)[:, :T, :F]
    mask = cells[:, None].expand_as(x)  # (B, C, T, F)

    may_swap = cfg.corruption == "swap" or cfg.swap_prob > 0  # decided on the host: no device sync
    swap = route | torch.tensor(cfg.corruption == "swap", device=device)  # (B,)
    if B // views == 1 and may_swap and cfg.donor == "other_clip":
        warnings.warn("group_mask: swap corruption needs a batch of at least 2 clips; using zeros for this batch", stacklevel=2)
        swap = torch.zeros_like(swap)
        may_swap = False
    if cfg.corruption == "noise":
        fill = torch.randn(x.shape, generator=generator, device=generator.device if generator is not None else device)
        fill = fill.to(device=device, dtype=x.dtype) * cfg.noise_std
    else:
        fill = torch.zeros((), dtype=x.dtype, device=device)
    if may_swap:
        donor = x[_donors(B, views, cfg.donor, generator, device)]  # (B, C, T, F)
        fill = torch.where(swap[:, None, None, None], donor, fill)
    corrupted = torch.where(mask, fill, x)
    return corrupted, mask.contiguous()


@torch.no_grad()
def reference_group_mask_loop(
    x: torch.Tensor, cfg: MaskingConfig | None = None, generator: torch.Generator | None = None, views: int = 1
):
    """The released algorithm, one sample and one block at a time (SLOW REFERENCE, not for training).

    Follows ``GMML_drop_rand_patches`` of the released code: draw a block, paint it, recount the
    mask, repeat until the target is reached; then the same corruptions as :func:`group_mask`
    (noise is in normalised units; the donor follows ``cfg.donor``). Kept for the notebooks'
    side-by-side comparison and for :mod:`asit.bench`.
    Same signature and outputs as :func:`group_mask`; not bit-identical to it for a given seed.
    """
    cfg = cfg or MaskingConfig()
    B, C, T, F = x.shape
    c = cfg.cell
    gT, gF = _corner_cells((math.ceil(T / c), math.ceil(F / c)), cfg.block_bounds)
    uh, uw = _max_units(cfg.max_block[0], T, c, cfg.block_bounds), _max_units(cfg.max_block[1], F, c, cfg.block_bounds)
    per_view = B // views

    def randint(low: int, high: int) -> int:  # inclusive bounds
        return int(torch.randint(low, high + 1, (1,), generator=generator).item())

    def uniform() -> float:
        return float(torch.rand((), generator=generator).item())

    corrupted = x.detach().clone()
    mask = torch.zeros_like(x, dtype=torch.bool)
    for i in range(B):
        swap = uniform() < cfg.swap_prob
        fraction = cfg.swap_fraction if swap else cfg.min_fraction + (cfg.max_fraction - cfg.min_fraction) * uniform()
        swap = swap or cfg.corruption == "swap"
        donor, first = None, i - i % per_view  # the first row of this sample's view
        if swap and cfg.donor == "any":
            donor = first + randint(0, per_view - 1)
        elif swap and per_view > 1:
            donor = first + (i - first + randint(1, per_view - 1)) % per_view
        elif swap:
            warnings.warn("reference_group_mask_loop: swap needs a batch of at least 2; using zeros", stacklevel=2)
        target = fraction * T * F
        m = mask[i, 0]
        while m.sum() < target:
            r, col = randint(0, gT - 1) * c, randint(0, gF - 1) * c
            h, w = randint(1, uh) * c, randint(1, uw) * c
            if cfg.shape == "time":
                col, w = 0, F
            elif cfg.shape == "freq":
                r, h = 0, T
            rows, cols = slice(r, min(r + h, T)), slice(col, min(col + w, F))
            if donor is not None:
                corrupted[i, :, rows, cols] = x[donor, :, rows, cols]
            elif cfg.corruption == "noise":
                block = corrupted[i, :, rows, cols]
                corrupted[i, :, rows, cols] = torch.randn(block.shape, generator=generator).to(x) * cfg.noise_std
            else:
                corrupted[i, :, rows, cols] = 0
            m[rows, cols] = True
        mask[i] = m
    return corrupted, mask
