"""The course checkpoint: `make course-checkpoint` is the committed encoder's recipe, step for step."""

import json
import os
import platform
import subprocess
import sys
import types

import pytest

from asit import course
from asit import engine_pretrain
from asit import pretrain as driver
from asit.datasets.builtin import is_complete
from asit.session import data_dir, repo_root

COMMITTED = repo_root() / course.CHECKPOINT_DIR
FIRST_STEPS = 6  # two logged points at the course's log_every = 3


class _Stop(Exception):
    pass


def _committed_epochs() -> int:
    return int(json.loads((COMMITTED / "config.json").read_text())["epochs"])


@pytest.mark.skipif(not (COMMITTED / "config.json").is_file(), reason="no committed course checkpoint")
def test_the_command_makes_the_committed_config():
    recorded = json.loads((COMMITTED / "config.json").read_text())
    made = course.course_config(epochs=recorded["epochs"], output_dir=recorded["output_dir"]).to_dict()
    made = json.loads(json.dumps(made))  # tuples as JSON lists, as recorded

    def recorded_part(value, like):  # fields added to the config since then are left out
        return {k: recorded_part(value[k], like[k]) for k in like} if isinstance(like, dict) else value

    assert recorded_part(made, recorded) == recorded  # every setting the checkpoint recorded


def first_steps(output_dir: str, steps: int = FIRST_STEPS) -> list[dict]:
    """The course pretraining's logged losses over its first ``steps`` steps, then stop."""
    calls = {"n": 0}
    real_step = engine_pretrain.train_step

    def stop_after_first_steps(*args, **kwargs):
        if calls["n"] == steps:
            raise _Stop
        calls["n"] += 1
        return real_step(*args, **kwargs)

    engine_pretrain.train_step = stop_after_first_steps  # the epoch loop's step
    cfg = course.course_config(epochs=_committed_epochs(), output_dir=output_dir, resume="never", num_workers=0)
    try:
        driver.pretrain(cfg, progress=False)
    except _Stop:
        pass
    finally:
        engine_pretrain.train_step = real_step
    return [json.loads(line) for line in (cfg.run_dir() / "steps.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not (COMMITTED / "steps.jsonl").is_file() or not is_complete(data_dir() / "builtin"),
                    reason="needs the committed course checkpoint and the built-in data (make data)")
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="bit-exact steps need MKL (x86-64)")
def test_the_command_reproduces_the_committed_first_steps(tmp_path):
    run = subprocess.run([sys.executable, __file__, str(tmp_path)], env={**os.environ, **course.REPRODUCIBLE_ENV},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    ours = json.loads(run.stdout.splitlines()[-1])
    theirs = [json.loads(line) for line in (COMMITTED / "steps.jsonl").read_text().splitlines()][: len(ours)]
    assert len(ours) == FIRST_STEPS // course.course_config().log_every
    assert same_steps(ours, theirs, _recorded_vendor(), course.cpu_identity()["vendor"])


def _recorded_vendor() -> str | None:
    summary = json.loads((COMMITTED / "summary.json").read_text())
    return summary.get("recorded_on", {}).get("vendor")


def same_steps(ours: list[dict], theirs: list[dict], recorded_vendor: str | None, vendor: str) -> bool:
    """Bit for bit on the CPU vendor that recorded ``theirs``; elsewhere, or when the checkpoint
    names no CPU, to a relative 1e-5, because MKL's AVX2 path still rounds differently on another
    vendor's CPU (asit/course.py)."""
    if [row["step"] for row in ours] != [row["step"] for row in theirs]:
        return False
    if recorded_vendor == vendor:
        return ours == theirs
    return ours == [pytest.approx(row, rel=1e-5) for row in theirs]


def test_steps_match_bit_for_bit_on_the_recording_vendor_and_nearly_on_another():
    # the committed checkpoint's sixth step as recorded and as an AMD CPU computes it
    # (results/HISTORY.md, fifteenth session), and the same step with a noise floor per view
    recorded = [{"step": 6, "loss": 7.877148628234863, "global": 3.484764575958252}]
    on_amd = [{"step": 6, "loss": 7.877147674560547, "global": 3.4847640991210938}]
    other_recipe = [{"step": 6, "loss": 7.713160991668701, "global": 3.5233466625213623}]
    assert same_steps(on_amd, recorded, "GenuineIntel", "AuthenticAMD")
    assert not same_steps(on_amd, recorded, "GenuineIntel", "GenuineIntel")  # same vendor: bits must agree
    assert same_steps(on_amd, recorded, None, "AuthenticAMD")  # recorded on a CPU it does not name
    assert not same_steps(other_recipe, recorded, "GenuineIntel", "AuthenticAMD")
    assert not same_steps([{**on_amd[0], "step": 3}], recorded, "GenuineIntel", "AuthenticAMD")


def test_make_checkpoint_copies_the_run_and_records_the_cpu_in_its_summary(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    (run_dir / "encoder").mkdir(parents=True)
    (run_dir / "encoder" / "model.safetensors").write_bytes(b"weights")
    for name in ("config.json", "log.jsonl", "steps.jsonl"):
        (run_dir / name).write_text("{}\n")
    (run_dir / "summary.json").write_text(json.dumps({"steps": 6, "final_loss": 7.7, "train_time_s": 1.0}))
    seen = {}

    def fake_pretrain(cfg):
        seen["cfg"] = cfg
        return types.SimpleNamespace(run_dir=run_dir, encoder_dir=run_dir / "encoder")

    monkeypatch.setattr(course, "pretrain", fake_pretrain)
    target = course.make_checkpoint(tmp_path / "runs", tmp_path / "checkpoint", epochs=1)
    assert seen["cfg"].epochs == 1 and seen["cfg"].view_eq_db == course.COURSE_SETTINGS["view_eq_db"]
    assert (target / "encoder" / "model.safetensors").read_bytes() == b"weights"
    summary = json.loads((target / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["recorded_on"] == course.cpu_identity()


def test_cpu_identity_names_the_vendor_and_the_kernels_torch_dispatches_to():
    identity = course.cpu_identity()
    assert identity["vendor"]  # "GenuineIntel", "AuthenticAMD", or platform.processor() off Linux
    assert identity["torch_capability"] in ("DEFAULT", "NO AVX", "AVX2", "AVX512", "VSX", "Z VECTOR", "SVE256")


def test_make_course_checkpoint_runs_in_the_reproducible_environment():
    dry_run = subprocess.run(["make", "-n", "course-checkpoint"], cwd=repo_root(), capture_output=True, text=True,
                             check=True).stdout
    command = next(line for line in dry_run.splitlines() if "-m asit.course" in line)
    assert all(f"{name}={value}" in command.split() for name, value in course.REPRODUCIBLE_ENV.items())


if __name__ == "__main__":  # the fresh process of the test above
    print(json.dumps(first_steps(sys.argv[1])))
