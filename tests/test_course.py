"""The course checkpoint: `make course-checkpoint` is the committed encoder's recipe, step for step."""

import json
import os
import platform
import subprocess
import sys

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
    assert ours == theirs  # every logged loss, bit for bit


def test_make_course_checkpoint_runs_in_the_reproducible_environment():
    dry_run = subprocess.run(["make", "-n", "course-checkpoint"], cwd=repo_root(), capture_output=True, text=True,
                             check=True).stdout
    command = next(line for line in dry_run.splitlines() if "-m asit.course" in line)
    assert all(f"{name}={value}" in command.split() for name, value in course.REPRODUCIBLE_ENV.items())


if __name__ == "__main__":  # the fresh process of the test above
    print(json.dumps(first_steps(sys.argv[1])))
