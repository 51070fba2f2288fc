"""asit.gpu_check: its CPU half end to end, what makes each check fail, the T4 estimate, and the
device-specific branches on a real GPU (``gpu`` marker, skipped without CUDA)."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from asit import gpu_check

README = Path(__file__).resolve().parents[1] / "README.md"
T4_ESTIMATE = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "gpu_check" / "t4_estimate.json"


def test_cpu_run_checks_every_path_and_writes_its_table(tmp_path, capsys):
    output = tmp_path / "cpu.json"
    assert gpu_check.main(["--device", "cpu", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["ok"] and results["device"] == "cpu" and results["amp_policy"] == "off"
    checks = results["correctness"]
    assert set(checks) == {"fbank", "masking", "pretrain_amp", "finetune_amp", "checkpoint", "collectives"}
    assert all(check["ok"] for check in checks.values())
    for name in ("pretrain_amp", "finetune_amp"):  # every mode ran from the same weights on the same batch
        assert set(checks[name]) >= {"off", "bf16", "fp16"}
        assert checks[name]["off"]["losses"][0]["loss"] > 0
    assert checks["pretrain_amp"]["off"]["weights_moved"]
    assert checks["masking"]["pixel"]["same_generator_identical"]
    assert checks["checkpoint"]["resume_on_cpu"] == "ok"
    assert results["speed"] == {} and results["capacity"] == {}  # the speed half needs CUDA
    printed = capsys.readouterr().out
    assert "checkpoint written on the device, resumed on CPU" in printed and "FAILED" not in printed


def test_a_mode_far_from_fp32_or_not_finite_fails():
    def run(mode):
        loss = {"off": 2.0, "bf16": 2.01, "fp16": 2.5}[mode]
        return {"losses": [{"loss": loss}], "finite": True}

    out = gpu_check._compare_modes(run, ["bf16", "fp16"])
    assert out["bf16"]["ok"] and not out["fp16"]["ok"] and not out["ok"]  # fp16's 25 % is outside its 1 %

    def diverged(mode):
        return {"losses": [{"loss": 2.0}], "finite": mode != "bf16"}

    assert not gpu_check._compare_modes(diverged, ["bf16"])["ok"]


def test_fbank_check_fails_when_the_device_path_differs(monkeypatch):
    from asit.features import FbankFrontend

    forward = FbankFrontend.forward

    def off_by_a_little(self, waves, lengths=None):
        return forward(self, waves, lengths) + (1e-3 if waves.shape[0] == gpu_check.CPU_SHAPES.mask_batch and self.filters.is_cpu else 0)

    monkeypatch.setattr(FbankFrontend, "forward", off_by_a_little)
    result = gpu_check.check_fbank(torch.device("cpu"), gpu_check.CPU_SHAPES)
    assert not result["ok"] and result["max_abs_diff_vs_per_clip_reference"] == pytest.approx(1e-3, rel=1e-2)


def test_masking_check_fails_when_the_generator_is_ignored(monkeypatch):
    real = gpu_check.group_mask

    def unseeded(x, cfg=None, generator=None, sync_free=None):
        return real(x, cfg, None, sync_free)  # the global RNG: two calls give different masks

    monkeypatch.setattr(gpu_check, "group_mask", unseeded)
    result = gpu_check.check_masking(torch.device("cpu"), gpu_check.CPU_SHAPES, rounds=1)
    assert not result["pixel"]["same_generator_identical"] and not result["ok"]


def test_t4_estimate_counts_a_linear_activation_footprint_at_smoke_shapes():
    estimate = gpu_check.t4_estimate("smoke")
    measured = [estimate["measured_saved_mib"][b] for b in ("1", "2", "3")]
    assert measured[0] < measured[1] < measured[2]
    assert estimate[f"linear_fit_error_at_batch_3"] < 0.05  # activations grow linearly in the batch
    # the encoder blocks' analytic share is part of what the whole step keeps, not more
    assert 0 < estimate["analytic_encoder_blocks_mib_per_clip"] <= estimate["activation_mib_per_clip"]
    parts = estimate["bytes"]
    assert parts["adamw_moments_fp32"] == 2 * parts["gradients_fp32"] == 2 * parts["weights_student_fp32"]
    assert parts["weights_student_fp32"] == pytest.approx(4 * estimate["student_parameters_m"] * 1e6, rel=1e-2)
    assert estimate["total_gib"] == pytest.approx(sum(parts.values()) / 2**30, abs=0.01)
    assert estimate["fits_with_margin"] and estimate["largest_batch_with_margin"] > estimate["batch_size"]


def test_readme_shows_the_committed_t4_estimate():
    estimate = json.loads(T4_ESTIMATE.read_text())
    text = README.read_text()
    assert gpu_check.t4_markdown(estimate) in text  # the table is rendered from the file, not typed
    verdict = "fits" if estimate["fits_with_margin"] else "does not fit"
    assert re.search(rf"batch {estimate['batch_size']}\b[^.]*{verdict}", text)
    assert f"up to about {estimate['largest_batch_with_margin']} clips" in text


def test_largest_batch_projection_reads_the_capacity_figures():
    capacity = {"gpu": {"step_s_at_preset_batch": 0.5}, "paper": {"clips_per_s_at_preset_batch": 100.0}}
    out = gpu_check.projections(capacity, pool_clips=726)
    from asit.config import get_preset

    cfg = get_preset("gpu")
    assert out["gpu_preset_pretraining"]["steps"] == cfg.epochs * (726 // cfg.batch_size)
    assert out["gpu_preset_pretraining"]["hours"] == pytest.approx(out["gpu_preset_pretraining"]["steps"] * 0.5 / 3600, rel=1e-2)
    assert out["paper_audioset_2m_epoch"]["hours_one_gpu"] == pytest.approx(gpu_check.AUDIOSET_2M_CLIPS / 100 / 3600, rel=1e-2)


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_gpu_correctness_half_at_tiny_shapes(tmp_path):
    output = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["device"] != "cpu" and results["ok"]
    masking = results["correctness"]["masking"]["patch"]
    assert masking["same_generator_identical"] and masking["device_generator"].startswith("own stream")


@pytest.mark.gpu
def test_gpu_amp_policy_matches_the_chip():
    major, _ = torch.cuda.get_device_capability()
    assert gpu_check.amp_mode(torch.device("cuda")) == ("bf16" if major >= 8 else "fp16")


@pytest.mark.gpu
def test_gpu_largest_batch_search_stops_at_an_out_of_memory():
    result = gpu_check.largest_batch("smoke", torch.device("cuda"), cap=64, steps=1)
    fits = [int(b) for b, m in result["trials_peak_memory_mib"].items() if m is not None]
    assert result["largest_batch_that_fits"] == max(fits)
    assert all(not math.isnan(m) for m in result["trials_peak_memory_mib"].values() if m is not None)


@pytest.mark.gpu
def test_gpu_speed_sections_at_tiny_shapes():
    device = torch.device("cuda")
    tiny = ("--num-frames", "64", "--global-dim", "256", "--local-dim", "64", "--steps", "2", "--warmup", "1")
    step = gpu_check.speed_pretrain_step(device, "tiny", 4, steps=2, extra=tiny)
    assert step["eager"]["clips_per_s"] > 0 and step["eager"]["peak_memory_mib"] > 0
    masking = gpu_check.speed_masking(device, 8, 64)
    assert masking["patch"]["batched_device_clips_per_s"] > 0
    e2e = gpu_check.speed_end_to_end(device, 2, "tiny", 4, steps=2, extra=tiny)
    assert 0 < e2e["ratio_end_to_end_over_step"]
    finetune = gpu_check.speed_finetune(device, steps=1, warmup=1, preset="smoke")
    assert all(finetune[task]["clips_per_s"] > 0 for task in gpu_check.FINETUNE_TASKS)


# ----------------------------------------------------------------------------- the AMP policy, without a GPU


@pytest.mark.parametrize(
    "chip, capability, expected",
    [("T4", (7, 5), "fp16"), ("V100", (7, 0), "fp16"), ("A100", (8, 0), "bf16"), ("L4", (8, 9), "bf16"), ("H100", (9, 0), "bf16")],
)
def test_amp_policy_gives_each_chip_its_mode(monkeypatch, chip, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # a T4 emulates bf16, so "is bf16 supported" says yes there: the policy must read the capability instead
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert gpu_check.amp_mode(torch.device("cuda")) == expected


def test_amp_policy_is_off_on_the_cpu_and_explicit_modes_win():
    from asit.training import amp_dtype_for

    assert gpu_check.amp_mode(torch.device("cpu")) == "off"
    assert amp_dtype_for("bf16", "cuda", (7, 5)) is torch.bfloat16  # asked for: given, even where emulated
    assert amp_dtype_for("off", "cuda", (9, 0)) is None
    with pytest.raises(ValueError, match="amp"):
        amp_dtype_for("fp8", "cuda", (9, 0))


def test_a_checkpoint_with_a_cuda_mask_generator_resumes_on_the_cpu():
    from asit.pretrain import load_training_state, training_state_dict

    cfg = gpu_check.pretrain_config(gpu_check.CPU_SHAPES)
    waves, lengths = gpu_check.test_waves(2, 2, cfg.num_frames)
    losses = []
    for generator_state in (None, torch.zeros(16, dtype=torch.uint8)):  # a CUDA generator's state: Philox seed and offset
        state = gpu_check.build_pretraining(cfg, torch.device("cpu"))
        saved = training_state_dict(state)
        if generator_state is not None:
            saved["mask_generator"] = generator_state
        load_training_state(state, saved)
        losses.append(float(gpu_check.pretrain_step(state, waves, lengths, 1)["loss"]))
    assert losses[0] == losses[1]  # the step reseeds the mask generator: its saved state changes nothing
