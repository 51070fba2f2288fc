"""Losses (asit.losses): temperature schedule, centering, cross-entropy, pairing, masked L1, weights."""

import math

import pytest
import torch
import torch.multiprocessing as mp

from asit.losses import (
    LOSS_WEIGHTS,
    ASiTLoss,
    DistillationLoss,
    GlobalDistillationLoss,
    LocalDistillationLoss,
    head_collapse,
    masked_l1_loss,
    teacher_entropies,
)


def _ce(p, s_logits, tau_s=0.1):
    """Hand-written cross-entropy of one teacher distribution and one student logit vector."""
    z = [v / tau_s for v in s_logits]
    log_norm = math.log(sum(math.exp(v) for v in z))
    return -sum(pi * (zi - log_norm) for pi, zi in zip(p, z))


def _softmax(values, tau):
    e = [math.exp(v / tau) for v in values]
    return [v / sum(e) for v in e]


def test_teacher_temperature_schedule():
    loss = DistillationLoss(8, num_epochs=100)
    assert loss.teacher_temperature(0) == pytest.approx(0.04)
    assert loss.teacher_temperature(29) == pytest.approx(0.07)
    assert loss.teacher_temperature(15) == pytest.approx(0.04 + 0.03 * 15 / 29)  # np.linspace(0.04, 0.07, 30)[15]
    assert loss.teacher_temperature(30) == loss.teacher_temperature(99) == pytest.approx(0.07)
    later = DistillationLoss(8, num_epochs=100, warmup_teacher_temp_epochs=5)
    assert later.teacher_temperature(4) == pytest.approx(0.07) and later.teacher_temperature(2) == pytest.approx(0.055)


def test_center_is_an_ema_of_the_teacher_batch_mean():
    loss = DistillationLoss(3, num_epochs=10)
    t1 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    loss.update_center(t1)
    torch.testing.assert_close(loss.center, 0.1 * torch.tensor([[2.0, 3.0, 4.0]]))
    t2 = torch.tensor([[10.0, 0.0, 0.0]])
    loss.update_center(t2)
    torch.testing.assert_close(loss.center, 0.9 * 0.1 * torch.tensor([[2.0, 3.0, 4.0]]) + 0.1 * torch.tensor([[10.0, 0.0, 0.0]]))
    # Patch tokens (V*B, N, C): the mean runs over every token.
    local = DistillationLoss(2, num_epochs=10)
    local.update_center(torch.tensor([[[1.0, 0.0], [3.0, 2.0]]]))
    torch.testing.assert_close(local.center, 0.1 * torch.tensor([[2.0, 1.0]]))


def test_global_loss_equals_hand_computed_cross_entropy():
    # B = 1, two views, three prototypes, epoch 0 (tau_t = 0.04), zero center.
    s = torch.tensor([[0.1, 0.2, 0.3], [0.3, -0.1, 0.0]])
    t = torch.tensor([[0.05, 0.0, -0.05], [0.0, 0.02, 0.01]])
    loss = GlobalDistillationLoss(3, num_epochs=10)
    got = loss(s, t, epoch=0)
    p0, p1 = _softmax(t[0].tolist(), 0.04), _softmax(t[1].tolist(), 0.04)
    want = (_ce(p0, s[1].tolist()) + _ce(p1, s[0].tolist())) / 2  # cross-view pairs only
    assert got.item() == pytest.approx(want, rel=1e-5)
    torch.testing.assert_close(loss.center, 0.1 * t.mean(0, keepdim=True))


def test_global_loss_uses_the_center_and_skips_same_view_pairs():
    torch.manual_seed(0)
    B, C = 3, 5
    s = torch.randn(4 * B, C)  # 2 global views + 2 local crops
    t = torch.randn(2 * B, C)
    loss = GlobalDistillationLoss(C, num_epochs=10)
    loss.center.fill_(0.3)
    center = loss.center.clone()
    got = loss(s, t, epoch=5)
    tau = loss.teacher_temperature(5)
    total, pairs = 0.0, 0
    for j in range(2):
        for i in range(4):
            if i == j:
                continue
            for b in range(B):
                p = _softmax((t[j * B + b] - center[0]).tolist(), tau)
                total += _ce(p, s[i * B + b].tolist()) / B
            pairs += 1
    assert pairs == 6
    assert got.item() == pytest.approx(total / pairs, rel=1e-5)
    # Including the same-view pairs would give a different value.
    with_same = sum(
        _ce(_softmax((t[j * B + b] - center[0]).tolist(), tau), s[i * B + b].tolist()) / B
        for j in range(2) for i in range(4) for b in range(B)
    ) / 8
    assert got.item() != pytest.approx(with_same, rel=1e-3)


def test_teacher_entropies_tell_the_two_collapses_from_a_working_head():
    k = 16
    uniform = torch.full((6, k), 1.0 / k)
    torch.testing.assert_close(teacher_entropies(uniform), torch.tensor([1.0, 1.0]))
    one_prototype = torch.zeros(6, k)
    one_prototype[:, 3] = 1.0  # every clip on prototype 3
    torch.testing.assert_close(teacher_entropies(one_prototype), torch.tensor([0.0, 0.0]))
    spread = torch.eye(k)[:8]  # confident, and eight clips on eight prototypes: what DINO wants
    entropy, batch_entropy = teacher_entropies(spread).tolist()
    assert entropy == pytest.approx(0.0, abs=1e-6) and batch_entropy == pytest.approx(math.log(8) / math.log(k))
    assert head_collapse(*teacher_entropies(uniform).tolist()) == "uniform"
    assert head_collapse(*teacher_entropies(one_prototype).tolist()) == "one prototype"
    assert head_collapse(entropy, batch_entropy) is None
    assert head_collapse(None, None) is None  # nothing measured (no global loss)


def test_global_loss_records_the_teacher_entropy_of_each_call():
    loss = GlobalDistillationLoss(8, num_epochs=1, warmup_teacher_temp_epochs=0)
    assert torch.isnan(loss.teacher_entropy).all()  # nothing measured yet
    student = torch.randn(4, 8)
    loss(student, torch.zeros(4, 8), epoch=0)  # equal teacher logits: a uniform teacher
    torch.testing.assert_close(loss.teacher_entropy, torch.tensor([1.0, 1.0]))
    sharp = torch.zeros(4, 8)
    sharp[torch.arange(4), torch.tensor([0, 1, 0, 1])] = 50.0  # two clips a view, on prototypes 0 and 1
    loss(student, sharp, epoch=0)
    entropy, batch_entropy = loss.teacher_entropy.tolist()
    assert entropy < 0.01 and batch_entropy == pytest.approx(math.log(2) / math.log(8), abs=0.01)


def test_local_loss_matches_tokens_at_the_same_position():
    torch.manual_seed(1)
    s = torch.randn(4, 6, 7)  # (V*B, N, C)
    t = torch.randn(4, 6, 7)
    loss = LocalDistillationLoss(7, num_epochs=10)
    got = loss(s, t, epoch=0)
    want = sum(_ce(_softmax(t[i, n].tolist(), 0.04), s[i, n].tolist()) for i in range(4) for n in range(6)) / 24
    assert got.item() == pytest.approx(want, rel=1e-5)
    # Shuffling the student's tokens changes the loss: positions are matched, not pooled.
    assert LocalDistillationLoss(7, num_epochs=10)(s[:, torch.randperm(6)], t, 0).item() != pytest.approx(got.item())
    with pytest.raises(ValueError):
        loss(s[:, :5], t, 0)


def test_masked_l1_ignores_unmasked_pixels():
    target = torch.zeros(2, 1, 4, 4)
    rec = torch.full((2, 1, 4, 4), 100.0, requires_grad=True)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, :2, :2] = True
    with torch.no_grad():
        rec[mask] = 0.5
    assert masked_l1_loss(rec, target, mask).item() == pytest.approx(0.5)
    empty = masked_l1_loss(rec, target, torch.zeros_like(mask))
    assert empty.item() == 0.0
    empty.backward()
    assert rec.grad is not None and rec.grad.abs().sum() == 0


def test_asit_loss_weights_and_switches():
    torch.manual_seed(2)
    B, N = 2, 3
    inputs = dict(
        student_global=torch.randn(2 * B, 8),
        teacher_global=torch.randn(2 * B, 8),
        student_local=torch.randn(2 * B, N, 4),
        teacher_local=torch.randn(2 * B, N, 4),
        reconstruction=torch.randn(2 * B, 1, 16, 16),
        target=torch.randn(2 * B, 1, 16, 16),
        mask=torch.rand(2 * B, 1, 16, 16) > 0.5,
    )
    out = ASiTLoss(8, 4, num_epochs=10)(epoch=0, **inputs)
    assert out.total.item() == pytest.approx((out.global_ + out.local + 2 * out.reconstruction).item(), rel=1e-6)
    later = ASiTLoss(8, 4, 10, *LOSS_WEIGHTS["later"])(epoch=0, **inputs)
    assert later.total.item() == pytest.approx(out.total.item() / 2, rel=1e-5)

    rec_only = ASiTLoss(8, 4, 10, w_global=0, w_local=0, w_rec=1)
    assert rec_only.global_loss is None and rec_only.local_loss is None
    out = rec_only(epoch=0, reconstruction=inputs["reconstruction"], target=inputs["target"], mask=inputs["mask"])
    assert out.global_ is None and out.local is None
    assert out.total.item() == pytest.approx(masked_l1_loss(inputs["reconstruction"], inputs["target"], inputs["mask"]).item())
    assert set(ASiTLoss(8, 4, 10).state_dict()) == {"global_loss.center", "local_loss.center"}
    with pytest.raises(ValueError):
        ASiTLoss(8, 4, 10, 0, 0, 0)(epoch=0)


def _center_worker(rank, world, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    loss = DistillationLoss(3, num_epochs=10)
    teacher = torch.full((2, 3), float(rank + 1)) * torch.tensor([1.0, 2.0, 3.0])  # rank 0: 1,2,3; rank 1: 2,4,6
    loss.update_center(teacher)
    torch.save(loss.center, f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_center_is_all_reduced_across_processes(tmp_path):
    # fork: the children reuse the parent's imports (spawn would re-import torch and timm, ~10 s).
    args = (2, str(tmp_path / "init"), str(tmp_path / "center"))
    mp.start_processes(_center_worker, args=args, nprocs=2, join=True, start_method="fork")
    c0, c1 = torch.load(tmp_path / "center.0"), torch.load(tmp_path / "center.1")
    torch.testing.assert_close(c0, c1)
    torch.testing.assert_close(c0, 0.1 * torch.tensor([[1.5, 3.0, 4.5]]))  # EMA of the global mean
