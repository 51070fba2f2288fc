"""The shared training core: the mixed-precision decision, the --set grammar, parameter groups."""

import pytest
import torch

from asit import models, training
from asit.classifier import AudioClassifier
from asit.config import get_preset
from asit.tasks import get_task


@pytest.mark.parametrize(
    "amp, device_type, capability, expected",
    [
        ("auto", "cuda", (7, 5), torch.float16),  # a T4: bf16 only emulated -> fp16 with loss scaling
        ("auto", "cuda", (7, 0), torch.float16),  # a V100
        ("auto", "cuda", (8, 0), torch.bfloat16),  # an A100
        ("auto", "cuda", (9, 0), torch.bfloat16),  # an H100
        ("auto", "cpu", None, None),
        ("auto", "mps", None, None),
        ("bf16", "cuda", (7, 5), torch.bfloat16),  # asked for explicitly
        ("fp16", "cuda", (9, 0), torch.float16),
        ("off", "cuda", (9, 0), None),
    ],
)
def test_amp_mode_follows_the_device_capability(amp, device_type, capability, expected):
    assert training.amp_dtype_for(amp, device_type, capability) == expected


def test_resolve_amp_reads_the_capability_of_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert training.resolve_amp("auto", torch.device("cuda", 0)) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert training.resolve_amp("auto", torch.device("cuda", 0)) == torch.bfloat16
    with pytest.raises(ValueError, match="amp must be one of"):
        training.amp_dtype_for("fp8", "cuda", (9, 0))


def test_the_scaler_scales_only_fp16_unless_asked_to_detect_non_finite_steps():
    cpu = torch.device("cpu")
    assert not training.grad_scaler(cpu, None).is_enabled()
    always = training.grad_scaler(cpu, None, always=True)
    assert always.is_enabled() and always.get_scale() == 1.0  # exact: only its non-finite check is wanted


def test_one_set_grammar_for_both_configs():
    task = training.apply_settings(get_task("esc50", "cpu"), ["epochs=3", "folds=(1,2)", "clip_grad=1.5", "cache_fbanks=true"])
    assert (task.epochs, task.folds, task.clip_grad, task.cache_fbanks) == (3, (1, 2), 1.5, True)
    task = training.apply_settings(get_task("ks2", "cpu"), ["folds=1,2", "max_train_items=96", "pool=token"])
    assert (task.folds, task.max_train_items, task.pool) == ((1, 2), 96, "token")
    cfg = training.apply_settings(get_preset("smoke"), ["clip_grad=0.5", "masking.max_fraction=0.6", "datasets=esc50,folder"])
    assert (cfg.clip_grad, cfg.masking.max_fraction, cfg.datasets) == (0.5, 0.6, ["esc50", "folder"])
    with pytest.raises(ValueError, match="unknown setting 'grad_clip'"):
        training.apply_settings(get_task("esc50", "cpu"), ["grad_clip=1.0"])  # the old name is gone


def test_embeddings_decay_in_pretraining_and_not_in_fine_tuning():
    model = AudioClassifier(models.create_encoder("tiny", 64, depth=2), num_classes=3)
    named = dict(model.named_parameters())

    def decay_of(groups):
        return {id(p): g["weight_decay"] for g in groups for p in g["params"]}

    pretraining = decay_of(training.param_groups(model, weight_decay=0.04))
    finetuning = decay_of(training.param_groups(model, weight_decay=0.04, decay_embeddings=False))
    assert pretraining[id(named["encoder.pos_embed"])] == 0.04 and finetuning[id(named["encoder.pos_embed"])] == 0.0
    assert pretraining[id(named["head.bias"])] == finetuning[id(named["head.bias"])] == 0.0
    groups = training.param_groups(model, weight_decay=0.04)
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    training.set_schedules(optimizer, 2e-4, weight_decay=0.1)
    assert {g["lr"] for g in optimizer.param_groups} == {2e-4}
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.1]


def test_non_finite_steps_are_counted_on_the_device_and_stop_the_run():
    steps = training.NonFiniteSteps(torch.device("cpu"), "stop")
    steps.record(torch.tensor(True), 0)
    steps.check(lambda first: f"bad at {first}")  # nothing bad yet
    steps.record(torch.tensor(False), 5)
    steps.record(torch.tensor(False), 7)
    with pytest.raises(training.NonFiniteLossError, match="bad at 5"):
        steps.check(lambda first: f"bad at {first}")
    skipping = training.NonFiniteSteps(torch.device("cpu"), "skip")
    skipping.record(torch.tensor(False), 1)
    skipping.check(lambda first: "never raised")
    assert int(skipping.count) == 1
