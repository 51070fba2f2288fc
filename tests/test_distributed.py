"""``torchrun --nproc_per_node=2`` on CPU (gloo) trains like one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_pretrain import write_clips

# Runs the engine, then every rank writes its own loss centers (only for this test to compare).
RUN = """
import os, sys, torch
import asit.pretrain as engine
captured = {}
real = engine.build_training
def build_training(*args, **kwargs):
    captured["state"] = real(*args, **kwargs)
    return captured["state"]
engine.build_training = build_training
engine.main(sys.argv[2:])
rank = int(os.environ.get("RANK", "0"))
torch.save(captured["state"].criterion.state_dict(), os.path.join(sys.argv[1], f"centers-rank{rank}.pt"))
"""


def cli_args(data: Path, out: Path, batch_size: int) -> list[str]:
    settings = {
        "datasets": "folder",
        "data_root": str(data),
        "max_clips": 8,
        "batch_size": batch_size,
        "epochs": 2,
        "num_workers": 0,
        "drop_path_rate": 0.0,  # stochastic depth draws differ per rank; everything else is shared
    }
    args = ["--preset", "smoke", "--output-dir", str(out), "--no-progress", "--resume", "never"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


def launch(tmp_path: Path, name: str, processes: int, batch_size: int) -> Path:
    out = tmp_path / name
    out.mkdir()
    data = tmp_path / "data"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes > 1:
        # torchrun --no-python runs the command as given: python -c RUN <out> <args>, once per rank
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "--no-python", sys.executable, "-c", RUN, str(out)]
    else:
        command = [sys.executable, "-c", RUN, str(out)]
    done = subprocess.run(command + cli_args(data, out, batch_size), env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    write_clips(tmp_path / "data", count=8)
    single = launch(tmp_path, "single", processes=1, batch_size=4)
    double = launch(tmp_path, "double", processes=2, batch_size=2)

    run_single, run_double = single / "pretrain" / "smoke", double / "pretrain" / "smoke"
    log_single = [json.loads(line) for line in (run_single / "log.jsonl").read_text().splitlines()]
    log_double = [json.loads(line) for line in (run_double / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log_double] == [1, 2]  # rank 0 alone wrote the log: no duplicates
    for a, b in zip(log_single, log_double):
        assert a["lr"] == pytest.approx(b["lr"])  # same global batch: same scaled learning rate
        for key in ("loss_global", "loss_local"):
            assert a[key] == pytest.approx(b[key], rel=2e-3), key
        # the masked L1 is averaged over each rank's masked pixels, then over ranks: its weighting
        # differs slightly from one average over the whole batch
        assert a["loss_reconstruction"] == pytest.approx(b["loss_reconstruction"], rel=1e-2)

    state_single = torch.load(run_single / "checkpoint.pth", weights_only=True)
    state_double = torch.load(run_double / "checkpoint.pth", weights_only=True)
    for name, value in state_single["teacher"].items():
        torch.testing.assert_close(state_double["teacher"][name], value, rtol=1e-3, atol=2e-4, msg=name)

    # the centers are all-reduced: both ranks hold the same, equal to the single process's
    rank0 = torch.load(double / "centers-rank0.pt", weights_only=True)
    rank1 = torch.load(double / "centers-rank1.pt", weights_only=True)
    alone = torch.load(single / "centers-rank0.pt", weights_only=True)
    assert rank0.keys() and rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
        torch.testing.assert_close(rank0[name], alone[name], rtol=1e-3, atol=1e-5)

    # only rank 0 writes: one set of run files, no temporary leftovers
    files = sorted(p.name for p in run_double.iterdir())
    assert files == sorted(p.name for p in run_single.iterdir())
    assert not [p for p in run_double.iterdir() if ".tmp-" in p.name]
