"""asit.pretraining_seeds: one check per pretraining seed, gathered into leads over the seeds."""

import json
import sys
from pathlib import Path

import pytest

from asit import course
from asit import label_efficiency as le
from asit import pretraining_seeds as ps


def _check(pretrained: dict[str, list[float]], random_scores: list[float], encoder: str = "enc") -> dict:
    """A check sweep's json as asit.label_efficiency.run writes it: one task, both protocols, k=4."""
    rows = []
    for seed, score in enumerate(random_scores):
        common = {"task": "ks2_cmn", "shots": 4, "seed": seed, "train_clips": 140}
        rows.append({**common, "protocol": "probe", "features": "fbank", "pool": "mel mean+std", "score": 30.0})
        for protocol, pool in (("probe", le.PROBE_POOL), ("finetune", le.POOL)):
            rows.append({**common, "protocol": protocol, "features": le.RANDOM, "pool": pool, "score": score})
            rows.append({**common, "protocol": protocol, "features": le.PRETRAINED, "pool": pool,
                         "score": pretrained[protocol][seed]})
    return {"encoder": encoder, "tasks": ["ks2_cmn"], "protocols": ["probe", "finetune"], "pool_shown": le.PROBE_POOL,
            "finetune_recipes": {"ks2_cmn": "lpft"}, "seconds": 1.0, "summary": le.summarise(rows), "rows": rows}


RANDOM = [6.0, 7.0, 8.0]
# seed 0: the probe 10 ahead with every draw ahead; fine-tuning 12 ahead but one draw below a random init
SEED0 = _check({"probe": [16.0, 17.0, 18.0], "finetune": [7.5, 25.0, 24.5]}, RANDOM)
# seed 1: the probe 8 ahead, every draw ahead; fine-tuning 3 ahead, its worst draw level with the best random init
SEED1 = _check({"probe": [14.0, 15.0, 16.0], "finetune": [8.0, 10.0, 12.0]}, RANDOM)


def test_leads_name_the_recipe_and_measure_lead_and_margin():
    rows = ps.leads(SEED0)
    assert [r["protocol"] for r in rows] == ["probe", "finetune (lpft)"]
    assert rows[0]["lead"] == pytest.approx(10.0) and rows[0]["margin"] == pytest.approx(8.0)
    assert rows[1]["lead"] == pytest.approx(12.0) and rows[1]["margin"] == pytest.approx(-0.5)


def test_over_seeds_counts_the_seeds_that_meet_the_target():
    summary = ps.gather({0: SEED0, 1: SEED1}, {}, "course_pretraining")
    probe_row, finetune_row = summary["over_seeds"]
    assert probe_row["lead_mean"] == pytest.approx(9.0)
    assert (probe_row["lead_min"], probe_row["lead_max"]) == pytest.approx((8.0, 10.0))
    assert probe_row["ahead_every_draw"] == 2 and probe_row["meets_target"] == 1  # 10 reaches it, 8 does not
    assert finetune_row["ahead_every_draw"] == 0 and finetune_row["meets_target"] == 0  # 12 ahead, ranges overlap
    assert summary["references_identical"]
    table = ps.markdown(summary)
    assert "| ks2_cmn | probe | 7.0 | +10.00 / +8.0 | +8.00 / +6.0 | +9.00 [+8.00, +10.00] | 2 of 2 | 1 of 2 |" in table


def test_references_that_differ_between_checks_are_reported():
    other = _check({"probe": [16.0, 17.0, 18.0], "finetune": [7.5, 25.0, 24.5]}, [6.0, 7.0, 8.5])
    summary = ps.gather({0: SEED0, 1: other}, {}, "x")
    assert not summary["references_identical"]
    assert "not identical" in ps.describe(summary)


def test_check_missing_runs_only_the_seeds_without_a_file(tmp_path, monkeypatch):
    folder = tmp_path / "label_efficiency"
    folder.mkdir()
    (folder / "course_pretraining_seed0.json").write_text(json.dumps(SEED0))
    calls = []

    def fake_run(encoder, name, output_dir, jobs, **check):
        calls.append((encoder, name, check))
        (Path(output_dir) / "label_efficiency" / f"{name}.json").write_text(json.dumps(SEED1))

    monkeypatch.setattr(le, "run", fake_run)
    checks = ps.check_missing([0, 1], {}, tmp_path / "runs", "course_pretraining", tmp_path, jobs=1)
    assert checks == {0: SEED0, 1: SEED1}
    assert len(calls) == 1 and calls[0][1] == "course_pretraining_seed1"
    assert calls[0][0].endswith("seed1/course_checkpoint/encoder") and calls[0][2] == ps.CHECK


def test_pretrain_missing_skips_present_encoders_and_names_the_log_of_a_failure(tmp_path, monkeypatch):
    present = ps.checkpoint_dir(tmp_path, "v", 1) / "encoder"
    present.mkdir(parents=True)
    (present / "model.safetensors").write_bytes(b"")
    failing = [sys.executable, "-c", "import sys; print('pretraining broke'); sys.exit(3)"]
    monkeypatch.setattr(ps, "pretrain_command", lambda seed, settings, destination: failing)
    ps.pretrain_missing([1], {"view_noise_snr": 30}, tmp_path, "v")  # present: nothing runs
    with pytest.raises(RuntimeError, match=r"seed 2 failed \(exit 3\).*pretrain\.log"):
        ps.pretrain_missing([1, 2], {"view_noise_snr": 30}, tmp_path, "v")
    assert "pretraining broke" in (tmp_path / "v" / "seed2" / "pretrain.log").read_text()


def test_the_pretrain_command_is_what_asit_course_reads(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(course, "make_checkpoint", lambda output_dir, destination, **o: seen.update(o, out=output_dir, to=destination))
    destination = tmp_path / "seed3" / "course_checkpoint"
    command = ps.pretrain_command(3, {"view_noise_snr": 30, "run_name": "x"}, destination)
    assert command[1:3] == ["-m", "asit.course"]
    course.main(command[3:])
    assert seen == {"seed": 3, "view_noise_snr": 30, "run_name": "x", "out": str(tmp_path / "seed3" / "run"),
                    "to": str(destination)}


def test_course_command_refuses_an_unknown_setting(capsys):
    with pytest.raises(SystemExit):
        course.main(["--set", "view_noise=30"])
    assert "KEY a config field" in capsys.readouterr().err


def test_seed_zero_of_the_course_settings_is_the_committed_encoder(tmp_path):
    if course.committed_encoder() is None:
        pytest.skip("no committed course encoder in this checkout")
    assert ps.encoder_of(tmp_path, "course_pretraining", 0, {}) == course.committed_encoder()
    assert ps.encoder_of(tmp_path, "v", 0, {"view_noise_snr": 30}) == ps.checkpoint_dir(tmp_path, "v", 0) / "encoder"


@pytest.mark.parametrize("text", ["", "3-1", "-1", "0,0", "a"])
def test_parse_seeds_refuses_what_names_no_seeds(text):
    with pytest.raises(ValueError):
        ps.parse_seeds(text)


def test_the_readme_block_renders_the_summary_or_says_it_is_missing(tmp_path):
    from asit.readme import pretraining_seeds_block

    assert "Not run yet" in pretraining_seeds_block(tmp_path)
    (tmp_path / "label_efficiency").mkdir()
    ps.write(ps.gather({0: SEED0, 1: SEED1}, {}, "course_pretraining"), tmp_path)
    block = pretraining_seeds_block(tmp_path)
    assert "with the seeds 0, 1" in block and "| +9.00 [+8.00, +10.00] | 2 of 2 | 1 of 2 |" in block
    assert "- ks2_cmn, probe: a lead of +8.00 to +10.00 points (mean +9.00) over the 2 pretraining seeds" in block


def test_the_committed_summary_is_what_its_checks_give():
    """results/label_efficiency/course_pretraining_seeds.json, gathered again from the committed checks."""
    from asit.session import repo_root

    results = repo_root() / "results"
    committed = json.loads((results / "label_efficiency" / "course_pretraining_seeds.json").read_text())
    seeds = committed["pretraining_seeds"]
    checks = {s: json.loads(ps.check_path(results, "course_pretraining", s).read_text()) for s in seeds}
    assert json.loads(json.dumps(ps.gather(checks, {}, "course_pretraining"))) == committed
    assert checks[0]["encoder"] == "results/course_checkpoint/encoder"  # seed 0 is the committed encoder
    assert committed["references_identical"]  # every check on one machine type: the same random inits


def test_checks_of_other_tasks_are_not_lined_up_by_position():
    other = json.loads(json.dumps(SEED1))
    other["protocols"] = ["finetune", "probe"]  # the same rows, the protocols in another order
    with pytest.raises(ValueError, match="pretraining seed 1's check scored other tasks or protocols"):
        ps.gather({0: SEED0, 1: other}, {}, "x")
