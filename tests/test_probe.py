"""asit.probe: frozen-feature linear probes and the pooled-fbank reference."""

import json

import numpy as np
import pytest
import torch

from asit import probe
from asit.models import create_encoder
from layouts import write_audioset, write_esc50


def _tiny_encoder(num_frames: int = 32) -> torch.nn.Module:
    torch.manual_seed(1)
    return create_encoder("tiny", num_frames=num_frames, depth=1).eval()


def test_pooled_fbank_uses_only_the_valid_frames():
    spec = torch.zeros(2, 1, 6, 3)
    spec[0, 0, :2] = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    spec[0, 0, 2:] = 100.0  # past the clip's end: must not count
    spec[1, 0] = 5.0
    split = probe.ProbeSplit(spec, torch.tensor([2, 6]), np.array([0, 1]))
    features = probe.pooled_fbank(split)
    assert features.shape == (2, 6)
    np.testing.assert_allclose(features[0], [2.0, 2.0, 2.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(features[1], [5.0, 5.0, 5.0, 0.0, 0.0, 0.0])


def test_clip_mean_norm_removes_each_clips_own_mean_and_the_reference_reads_the_raw_clips():
    torch.manual_seed(0)
    raw = torch.randn(3, 1, 10, 4) + torch.tensor([0.0, 5.0, -3.0])[:, None, None, None]  # a level a clip
    frames = torch.tensor([10, 6, 3])
    raw = raw * probe.valid_frames(raw, frames)  # zero padding, as load_split's front end pads
    normalised = probe.clip_mean_normalised(raw, frames)
    for i, n in enumerate(frames.tolist()):
        torch.testing.assert_close(normalised[i, 0, :n].mean(0), torch.zeros(4), atol=1e-6, rtol=0)
        torch.testing.assert_close(normalised[i, 0, :n] - normalised[i, 0, :1], raw[i, 0, :n] - raw[i, 0, :1])  # shape kept
        assert torch.equal(normalised[i, 0, n:], torch.zeros(10 - n, 4))  # padding stays 0
    split = probe.ProbeSplit(normalised, frames, np.array([0, 1, 2]), raw=raw)
    np.testing.assert_array_equal(probe.pooled_fbank(split), probe.pooled_fbank(probe.ProbeSplit(raw, frames, split.targets)))
    part = split.subset(np.array([2, 0]))
    assert torch.equal(part.spec, normalised[[2, 0]]) and torch.equal(part.raw, raw[[2, 0]]) and part.targets.tolist() == [2, 0]
    cut = split.first_frames(4)
    assert cut.frames.tolist() == [4, 4, 3] and torch.equal(cut.raw, raw[:, :, :4]) and torch.equal(cut.spec, normalised[:, :, :4])
    plain = probe.ProbeSplit(raw, frames, split.targets)
    assert plain.subset(np.array([1])).raw is None  # nothing normalised: the reference reads spec


def test_load_split_with_clip_mean_norm_keeps_the_loaded_clips_as_raw(tmp_path):
    esc = write_esc50(tmp_path / "esc50", num_classes=2, clips_per_fold=2, folds=5, seconds=0.6)
    task = probe.ProbeTask("esc50", "trainval", "test", 64, {"fold": 1})
    plain, _ = probe.load_split(task, "trainval", esc)
    normed, _ = probe.load_split(probe.ProbeTask(**{**task.__dict__, "clip_mean_norm": True}), "trainval", esc)
    assert plain.raw is None and torch.equal(normed.raw, plain.spec)
    torch.testing.assert_close(normed.spec, probe.clip_mean_normalised(plain.spec, plain.frames))
    ks2, cmn = probe.PROBE_TASKS["ks2"], probe.PROBE_TASKS["ks2_cmn"]  # the same clips, one step apart
    assert cmn.clip_mean_norm and not ks2.clip_mean_norm and {**cmn.__dict__, "clip_mean_norm": False} == ks2.__dict__
    assert "ks2_cmn" not in probe.PAPER_PROBE_TASKS  # python -m asit.probe runs one task of each kind


def test_encoder_features_average_the_windows_of_each_clips_valid_frames():
    encoder = _tiny_encoder(32)
    spec = torch.randn(2, 1, 96, 128)
    split = probe.ProbeSplit(spec, torch.tensor([40, 96]), np.array([0, 1]))
    features = probe.encoder_features(encoder, split, window=32)
    # 50 % overlap, the last window ending at the clip's end: clip 0 holds 40 frames (windows at
    # frames 0 and 8), clip 1 all 96 (at 0, 16, 32, 48 and 64)
    starts = [(0, 8), (0, 16, 32, 48, 64)]
    with torch.no_grad():
        tokens = [encoder.forward_features(torch.stack([spec[i, :, s : s + 32] for s in starts[i]])) for i in range(2)]
    for i in range(2):
        np.testing.assert_allclose(features["token"][i], tokens[i][:, 0].mean(0).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(features["mean"][i], tokens[i][:, 1:].mean((0, 1)).numpy(), rtol=1e-5, atol=1e-6)
        # bands: a 32 x 128 window is a 2 x 8 grid of patches, time-major; average the 2 rows, keep the 8 bands
        grid = tokens[i][:, 1:].reshape(len(starts[i]), 2, 8, -1)
        np.testing.assert_allclose(features["bands"][i], grid.mean((0, 1)).flatten().numpy(), rtol=1e-5, atol=1e-6)
    assert features["bands"].shape == (2, 8 * encoder.embed_dim)
    # the bands' mean is the plain mean: bands only keeps apart what mean adds together
    np.testing.assert_allclose(features["bands"].reshape(2, 8, -1).mean(1), features["mean"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shorter than"):
        probe.encoder_features(encoder, probe.ProbeSplit(spec[:, :, :16], torch.tensor([16, 16]), np.array([0, 1])), window=32)


def test_the_dino_read_out_is_the_last_blocks_normed_class_tokens_and_the_mean_patch_token():
    torch.manual_seed(2)
    encoder = create_encoder("tiny", num_frames=32, depth=6).eval()  # deeper than the 4 blocks read
    spec = torch.randn(2, 1, 32, 128)  # one window a clip
    features = probe.encoder_features(encoder, probe.ProbeSplit(spec, torch.tensor([32, 32]), np.array([0, 1])), window=32)
    hidden, kept = encoder.patch_drop(encoder._pos_embed(encoder.patch_embed(spec))), []
    with torch.no_grad():  # block by block, by hand: the class token of blocks 3-6, each through the final norm
        hidden = encoder.norm_pre(hidden)
        for block in encoder.blocks:
            hidden = block(hidden)
            kept.append(encoder.norm(hidden))
    expected = torch.cat([layer[:, 0] for layer in kept[-4:]] + [kept[-1][:, 1:].mean(1)], dim=1)
    assert features["dino"].shape == (2, 5 * encoder.embed_dim)
    np.testing.assert_allclose(features["dino"], expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(features["dino"][:, -2 * encoder.embed_dim :],
                                  np.concatenate([features["token"], features["mean"]], axis=1))
    shallow = probe.encoder_features(_tiny_encoder(32), probe.ProbeSplit(spec, torch.tensor([32, 32]), np.array([0, 1])), 32)
    assert shallow["dino"].shape == (2, 2 * 192)  # one block: its class token and the mean patch token


def test_an_encoder_without_blocks_reads_out_its_embedded_patches():
    """asit.label_efficiency's diagnosis probes a random init with its blocks removed (depth 0)."""
    from asit.label_efficiency import _no_blocks

    encoder = _no_blocks(_tiny_encoder(32))
    spec = torch.randn(2, 1, 32, 128)  # one window a clip
    features = probe.encoder_features(encoder, probe.ProbeSplit(spec, torch.tensor([32, 32]), np.array([0, 1])), window=32)
    with torch.no_grad():  # patch embedding, positions, final norm
        tokens = encoder.norm(encoder._pos_embed(encoder.patch_embed(spec)))
    np.testing.assert_allclose(features["token"], tokens[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features["mean"], tokens[:, 1:].mean(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(features["dino"], np.concatenate([features["token"], features["mean"]], axis=1))


def test_probe_score_separates_informative_from_uninformative_features():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    informative = np.eye(3)[labels] * 3 + 0.1 * rng.standard_normal((60, 3))
    noise = rng.standard_normal((60, 3))
    train, test = np.arange(60) % 2 == 0, np.arange(60) % 2 == 1
    assert probe.probe_score(informative[train], labels[train], informative[test], labels[test]) == 100.0
    assert probe.probe_score(noise[train], labels[train], noise[test], labels[test]) < 70.0
    # multi-label: one regression per class, scored by mAP
    multi = np.stack([labels == 0, labels != 0], axis=1).astype(np.float32)
    assert probe.probe_score(informative[train], multi[train], informative[test], multi[test], multilabel=True) == 100.0
    with pytest.raises(ValueError, match="single class"):
        probe.probe_score(informative[train], np.zeros(30, dtype=int), informative[test], labels[test])


def test_run_probes_on_esc50_and_audioset_layouts(tmp_path, monkeypatch):
    # Distinct tones per class: the pooled-fbank reference must read them perfectly.
    esc = write_esc50(tmp_path / "esc50", num_classes=3, clips_per_fold=2, folds=5, seconds=0.6)
    audioset = write_audioset(tmp_path / "audioset", num_classes=3, train_clips=12, eval_clips=6, full_clips=0, seconds=0.6)
    short = {name: probe.ProbeTask(t.dataset, t.train_split, t.test_split, 64, t.options) for name, t in probe.PROBE_TASKS.items()}
    monkeypatch.setattr(probe, "PROBE_TASKS", short)
    rows = probe.run_probes({"tiny": _tiny_encoder(32), "random init": probe.RANDOM_INIT}, ["esc50", "audioset"],
                            data_root={"esc50": esc, "audioset": audioset}, progress=False)
    assert [(r["task"], r["features"], r["pool"]) for r in rows] == [
        (task, features, pool)
        for task in ("esc50", "audioset")
        for features, pool in [("fbank", "mel mean+std")] + [(f, p) for f in ("tiny", "random init") for p in ("token", "mean", "bands", "dino")]
    ]
    esc_rows = [r for r in rows if r["task"] == "esc50"]
    assert {r["train_clips"] for r in esc_rows} == {24} and {r["test_clips"] for r in esc_rows} == {6}
    assert esc_rows[0]["score"] == 100.0
    assert all(0.0 <= r["score"] <= 100.0 for r in rows)
    assert {r["metric"] for r in rows if r["task"] == "audioset"} == {"mAP"}
    frame = probe.table(rows)
    assert set(frame.columns) == {"audioset", "esc50"}
    assert frame.loc[("fbank", "mel mean+std"), "esc50"] == 100.0


def test_random_init_needs_a_checkpoint_and_unknown_tasks_fail():
    with pytest.raises(ValueError, match="random init needs"):
        probe.run_probes({"random init": probe.RANDOM_INIT}, ["esc50"], progress=False)
    with pytest.raises(ValueError, match="unknown probe task"):
        probe.run_probes({"tiny": _tiny_encoder()}, ["imagenet"], progress=False)


def test_cli_writes_rows(tmp_path, monkeypatch):
    from asit.models import save_encoder

    esc = write_esc50(tmp_path / "esc50", num_classes=2, clips_per_fold=2, folds=5, seconds=0.6)
    encoder_dir = save_encoder(_tiny_encoder(32), tmp_path / "run" / "encoder")
    short = {"esc50": probe.ProbeTask("esc50", "trainval", "test", 64, {"fold": 1})}
    monkeypatch.setattr(probe, "PROBE_TASKS", short)
    out = tmp_path / "probes.json"
    rows = probe.main([str(encoder_dir), "--tasks", "esc50", "--data-root", f"esc50={esc}", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["rows"] == json.loads(json.dumps(rows))
    assert {r["features"] for r in rows} == {"fbank", "run", "random init"}
    assert torch.is_grad_enabled()  # the CLI leaves no global state behind for the caller


def test_random_inits_of_other_seeds_differ_and_leave_the_global_rng_alone():
    reference = _tiny_encoder(32)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    seed0, again, seed1 = (probe._encoder(source, reference) for source in ("none", probe.random_init(0), probe.random_init(1)))
    assert torch.equal(torch.rand(3), expected_next)  # drawing the inits did not consume the caller's stream
    assert probe.random_init(0) == "none" and probe.random_init(1) == "none:1"
    assert torch.equal(seed0.pos_embed, again.pos_embed)
    assert not torch.equal(seed0.pos_embed, seed1.pos_embed)
    assert seed1.asit_config["source"] == "random init (seed 1)"
    assert len(seed1.blocks) == len(reference.blocks) and seed1.embed_dim == reference.embed_dim
    with pytest.raises(ValueError, match="none:<seed>"):
        probe._encoder("none:one", reference)


def test_seed_0_random_init_is_where_a_seed_0_pretraining_starts():
    # The README compares pretrained encoders with "none": it must be their own starting weights.
    from asit.config import get_preset
    from asit.pretrain import build_student

    start = build_student(get_preset("smoke", seed=0)).encoder
    reference = create_encoder("tiny", num_frames=start.patch_embed.img_size[0], depth=len(start.blocks))
    drawn = probe._encoder(probe.random_init(0), reference)
    assert list(start.state_dict()) == list(drawn.state_dict())
    for (name, expected), actual in zip(start.state_dict().items(), drawn.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_cli_probes_several_random_seeds(tmp_path, monkeypatch):
    from asit.models import save_encoder

    esc = write_esc50(tmp_path / "esc50", num_classes=2, clips_per_fold=2, folds=5, seconds=0.6)
    encoder_dir = save_encoder(_tiny_encoder(32), tmp_path / "run" / "encoder")
    monkeypatch.setattr(probe, "PROBE_TASKS", {"esc50": probe.ProbeTask("esc50", "trainval", "test", 64, {"fold": 1})})
    out = tmp_path / "probes.json"
    rows = probe.main([str(encoder_dir), "--tasks", "esc50", "--data-root", f"esc50={esc}", "--random-seeds", "3", "--out", str(out)])
    assert {r["features"] for r in rows} == {"fbank", "run", "random init", "random init (seed 1)", "random init (seed 2)"}
    assert json.loads(out.read_text())["checkpoints"]["random init (seed 2)"] == "none:2"
    with pytest.raises(SystemExit):
        probe.main([str(encoder_dir), "--random-seeds", "0"])


class _PatchMeans(torch.nn.Module):
    """A stand-in encoder whose tokens are its patches' mean values (D = 1), in timm's token order."""

    num_prefix_tokens = 1
    embed_dim = 1
    blocks = [None]  # one block: the DINO read-out reads one class token

    def __init__(self, patch: int = 16):
        super().__init__()
        self.patch_embed = torch.nn.Module()
        self.patch_embed.patch_size = (patch, patch)
        self.pool = torch.nn.AvgPool2d(patch)

    def get_intermediate_layers(self, x, n, return_prefix_tokens, norm):  # timm's, for one block
        patches = self.pool(x).flatten(2).transpose(1, 2)  # (B, T/p * F/p, 1), time-major like timm's ViT
        return [(patches, patches.mean(1, keepdim=True))]


def test_bands_keep_frequency_apart_and_time_together():
    # Energy in the lowest 16 mel bins only, during the first half of the window: band 0 must read
    # it at half strength (averaged over time), the other bands must read nothing.
    spec = torch.zeros(1, 1, 32, 128)
    spec[0, 0, :16, :16] = 4.0
    split = probe.ProbeSplit(spec, torch.tensor([32]), np.array([0]))
    features = probe.encoder_features(_PatchMeans(), split, window=32)
    np.testing.assert_allclose(features["bands"][0], [2.0] + [0.0] * 7)
    np.testing.assert_allclose(features["mean"][0], [0.25])
