"""A pretraining run killed mid-epoch resumes from its last checkpoint and ends where an
uninterrupted run ends (same losses, same weights) on CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from asit.checkpoint import load_checkpoint
from test_pretrain import write_clips

# Each step sleeps a little in the run we kill, so the kill lands mid-epoch, right after a save.
SLOW_RUN = """
import sys, time
import asit.pretrain as engine
real = engine.train_step
def slow_step(*args, **kwargs):
    time.sleep(float(sys.argv[1]))
    return real(*args, **kwargs)
engine.train_step = slow_step
engine.main(sys.argv[2:])
"""


def cli_args(data: Path, out: Path) -> list[str]:
    settings = {
        "datasets": "folder",
        "data_root": str(data),
        "max_clips": 12,
        "batch_size": 2,  # 6 steps per epoch
        "epochs": 2,
        "save_every_steps": 2,  # checkpoint.pth also mid-epoch
        "num_workers": 0,
    }
    args = ["--preset", "smoke", "--output-dir", str(out), "--no-progress"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


def run(args: list[str], delay: float = 0.0, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(delay), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def final_state(out: Path):
    run_dir = out / "pretrain" / "smoke"
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return log, torch.load(run_dir / "checkpoint.pth", weights_only=True)


@pytest.mark.slow
def test_killed_run_resumes_and_matches_uninterrupted(tmp_path):
    data = write_clips(tmp_path / "data", count=12)

    reference = run(cli_args(data, tmp_path / "reference"))
    output, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, output

    out = tmp_path / "killed"
    latest = out / "pretrain" / "smoke" / "checkpoint.pth"
    victim = run(cli_args(data, out), delay=0.25)
    deadline = time.time() + 120
    while not latest.exists():  # the first save happens after step 2 of epoch 1
        assert victim.poll() is None, victim.communicate()[0]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    saved = load_checkpoint(latest)
    assert saved["epoch"] == 0 and 0 < saved["step_in_epoch"] < 6, "the kill should land mid-epoch"
    assert not (out / "pretrain" / "smoke" / "summary.json").exists()

    resumed = run(cli_args(data, out))
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, output
    assert f"epoch 0, step {saved['step_in_epoch']}" in output  # it says where it picked up

    log_ref, state_ref = final_state(tmp_path / "reference")
    log_res, state_res = final_state(out)
    assert [line["epoch"] for line in log_res] == [1, 2]
    for a, b in zip(log_ref, log_res):
        for key in ("loss", "loss_global", "loss_local", "loss_reconstruction", "lr", "momentum"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    for part in ("student", "teacher", "losses"):
        for name, value in state_ref[part].items():
            torch.testing.assert_close(state_res[part][name], value, rtol=1e-6, atol=1e-7, msg=f"{part}.{name}")
    # steps.jsonl: every logged step once, none lost or repeated by the kill and the resume
    steps_ref, steps_res = (
        [json.loads(line) for line in (o / "pretrain" / "smoke" / "steps.jsonl").read_text().splitlines()]
        for o in (tmp_path / "reference", out)
    )
    assert [p["step"] for p in steps_res] == [p["step"] for p in steps_ref]
    assert [p["loss"] for p in steps_res] == pytest.approx([p["loss"] for p in steps_ref], rel=1e-6, abs=1e-7)
