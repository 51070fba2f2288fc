"""The benchmark runs, writes every section with sensible numbers, and its released path is real.

No timing is asserted here: speed is what ``python -m asit.bench`` measures and prints.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asit import bench
from asit.audio import DATASET_STATS, clip_fbank
from asit.masking import MaskingConfig, fraction_bounds

REPO = Path(__file__).resolve().parents[1]


def close(a: float, b: float, rel: float = 5e-3) -> bool:
    """Figures are stored with 4 significant digits; a ratio of two of them agrees to ~1e-3."""
    return math.isclose(a, b, rel_tol=rel)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "asit.bench", "--quick", "--threads", "1", "--output", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    return json.loads(out.read_text())


def test_quick_run_writes_every_section(quick_results):
    r = quick_results
    assert set(r["sections"]) == set(bench.SECTIONS)
    assert r["quick"] is True
    assert r["device"] == "cpu" and r["torch"] == torch.__version__
    assert r["threads"]["torch_intra_op"] == 1 and r["threads"]["loader_section"] == 1
    assert r["settings"]["batch_size"] == 2 and r["settings"]["sizes"] == ["tiny"]
    for section in r["sections"].values():
        assert section["section_wall_s"] > 0


def test_throughputs_positive_and_ratios_consistent(quick_results):
    s = quick_results["sections"]

    loader = s["loader"]
    assert loader["ours_cpu_ms_per_clip"] > 0 and loader["released_cpu_ms_per_clip"] > 0
    assert close(loader["ratio_released_over_ours"], loader["released_cpu_ms_per_clip"] / loader["ours_cpu_ms_per_clip"])
    assert set(loader["released_cpu_ms_per_clip_parts"]) == {"decode", "fbank", "masking"}
    # the parts are measured inside the released call, so together they cannot exceed it (+ rounding)
    assert sum(loader["released_cpu_ms_per_clip_parts"].values()) <= loader["released_cpu_ms_per_clip"] * 1.01
    native = loader["files_at_model_rate"]  # 32 kHz files by default, so the 16 kHz rerun is there
    assert native["source_sample_rate"] == loader["sample_rate"] != loader["source_sample_rate"]
    assert close(native["ratio_released_over_ours"], native["released_cpu_ms_per_clip"] / native["ours_cpu_ms_per_clip"])

    for align in ("pixel", "patch"):
        row = s["masking"][align]
        assert row["loop_cpu_clips_per_s"] > 0 and row["batched_cpu_clips_per_s"] > 0
        assert close(row["ratio_batched_cpu_over_loop"], row["batched_cpu_clips_per_s"] / row["loop_cpu_clips_per_s"])
        assert 0.5 <= row["mean_masked_fraction"] < 1.0

    feats = s["features"]
    assert feats["per_clip_cpu_clips_per_s"] > 0 and feats["batched_cpu_clips_per_s"] > 0
    assert close(feats["ratio_batched_cpu_over_per_clip"], feats["batched_cpu_clips_per_s"] / feats["per_clip_cpu_clips_per_s"])
    assert feats["max_abs_difference"] < 1e-3  # the two fbank paths agree (tested in detail in test_features)

    tiny = s["step"]["tiny"]
    assert tiny["batch_size"] == 2 and tiny["flops_per_step"] > 0 and tiny["step_s"] > 0
    assert close(tiny["clips_per_s"], tiny["batch_size"] / tiny["step_s"])
    assert close(tiny["flops_per_s"], tiny["flops_per_step"] / tiny["step_s"])
    assert tiny["mfu"] is None  # no peak for a CPU
    assert tiny["peak_memory_mib"] >= 0

    e2e = s["end_to_end"]
    assert e2e["workers"] == 2 and e2e["step_alone_clips_per_s"] > 0 and e2e["end_to_end_clips_per_s"] > 0
    assert close(e2e["ratio_end_to_end_over_step"], e2e["end_to_end_clips_per_s"] / e2e["step_alone_clips_per_s"])


def test_targets_follow_the_figures(quick_results):
    r = quick_results
    t, s = r["targets"], r["sections"]
    assert t["loader_cpu_time"]["value"] == s["loader"]["ratio_released_over_ours"]
    assert t["loader_cpu_time"]["met"] == (s["loader"]["ratio_released_over_ours"] >= 5.0)
    for align in ("pixel", "patch"):
        ratio = s["masking"][align]["ratio_batched_cpu_over_loop"]
        assert t[f"masking_cpu_{align}"]["met"] == (ratio >= 1.0)
        assert t[f"masking_gpu_{align}"]["met"] is None  # no GPU in a CPU run
    assert t["end_to_end_gpu"]["met"] is None


def test_released_worker_item_computes_fbank_and_mask(tmp_path):
    """The released path really does the per-clip fbank and the per-sample masking loop."""
    path = bench.write_test_clips(tmp_path, 1, seconds=0.5, sample_rate=32_000)[0]
    num_frames = 64  # longer than the 0.5 s clip (48 frames): zero-padded, no crop
    timings: dict[str, float] = {}
    item = bench.released_worker_item(
        path, num_frames=num_frames, sample_rate=16_000, roll_prob=0.0,
        generator=torch.Generator().manual_seed(0), timings=timings,
    )
    assert item["fbank"].shape == (2, 1, num_frames, 128)
    assert item["corrupted"].shape == (2, 1, num_frames, 128)
    assert item["mask"].shape == (2, 1, num_frames, 128) and item["mask"].dtype == torch.bool
    assert set(timings) == {"decode", "fbank", "masking"}
    # without a roll, both views are the per-clip reference fbank of the file
    reference = clip_fbank(path, DATASET_STATS["audioset"], num_frames, sample_rate=16_000)
    torch.testing.assert_close(item["fbank"][0, 0], reference)
    torch.testing.assert_close(item["fbank"][1, 0], reference)
    # masked pixels are zeroed, the others untouched; the coverage is the documented one
    mask = item["mask"]
    assert bool((item["corrupted"][mask] == 0).all())
    torch.testing.assert_close(item["corrupted"][~mask], item["fbank"][~mask])
    low, high = fraction_bounds(MaskingConfig(), num_frames, 128)
    fractions = mask.flatten(1).float().mean(1)
    assert bool(((fractions >= low) & (fractions < high)).all())


@pytest.mark.parametrize(
    "name, slug",
    [
        ("NVIDIA H100 80GB HBM3", "nvidia-h100"),
        ("NVIDIA H100 PCIe", "nvidia-h100"),
        ("NVIDIA H200", "nvidia-h200"),
        ("NVIDIA A100-SXM4-40GB", "nvidia-a100"),
        ("Tesla T4", "tesla-t4"),
        ("NVIDIA L4", "nvidia-l4"),
    ],
)
def test_device_slug(name, slug):
    assert bench.slugify_device_name(name) == slug


def test_cli_rejects_unknown_section():
    with pytest.raises(SystemExit):
        bench.run(["--only", "loader,warp_drive", "--quick"])


def test_markdown_table_has_a_row_per_figure(quick_results, capsys):
    table = bench.markdown_table(quick_results)
    lines = table.splitlines()
    assert lines[0].startswith("| figure |") and len({line.count("|") for line in lines}) == 1
    # loader (2 rows: 32 kHz files and files at the model rate), masking (2), fbank, step tiny, end to end
    assert len(lines) == 2 + 7
    assert str(quick_results["sections"]["loader"]["ratio_released_over_ours"]) in table
