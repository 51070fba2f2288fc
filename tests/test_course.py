"""The course checkpoint: `make course-checkpoint` is the committed encoder's recipe, step for step."""

import json

import pytest
import torch

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


@pytest.mark.skipif(not (COMMITTED / "steps.jsonl").is_file() or not is_complete(data_dir() / "builtin"),
                    reason="needs the committed course checkpoint and the built-in data (make data)")
def test_the_command_reproduces_the_committed_first_steps(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_step = engine_pretrain.train_step

    def stop_after_first_steps(*args, **kwargs):
        if calls["n"] == FIRST_STEPS:
            raise _Stop
        calls["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine_pretrain, "train_step", stop_after_first_steps)  # the epoch loop's step
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `make course-checkpoint` runs (OMP_NUM_THREADS=1)
    cfg = course.course_config(epochs=_committed_epochs(), output_dir=str(tmp_path), resume="never", num_workers=0)
    try:
        with pytest.raises(_Stop):
            driver.pretrain(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    ours = [json.loads(line) for line in (cfg.run_dir() / "steps.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (COMMITTED / "steps.jsonl").read_text().splitlines()][: len(ours)]
    assert len(ours) == FIRST_STEPS // cfg.log_every
    assert ours == theirs  # every logged loss, bit for bit
