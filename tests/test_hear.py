"""The HEAR 2021 API of asit.hear, held to the contract hear-validator checks, and the windowing
of asit.embeddings replayed by hand.

hear-validator itself (PyPI ``hearvalidator``) is not run: it imports TensorFlow at start-up
(``import tensorflow as tf``, to accept TensorFlow models too), several hundred megabytes that
this PyTorch stack does not otherwise need. The first two tests make the same calls it makes
(16 clips of 2 s and 8 clips of 3.74 s of white noise) and the same checks, and more.
"""

from __future__ import annotations

import pytest
import torch

from asit import hear, models
from asit.audio import NormStats
from asit.embeddings import ClipEmbedder, find_default_encoder

RATE = 16_000
WINDOW = 64  # frames: 4 patch rows per encoder input


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    torch.manual_seed(0)
    encoder = models.create_encoder("tiny", WINDOW, depth=2, drop_path_rate=0.0)
    return models.save_encoder(encoder, tmp_path_factory.mktemp("hear") / "encoder", {"preset": "smoke"}, stats=NormStats(-6.0, 4.0))


@pytest.fixture(scope="module")
def model(encoder_dir):
    return hear.load_model(str(encoder_dir))


def _noise(n, seconds, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, int(seconds * RATE), generator=generator) * 2 - 1


def test_the_module_and_model_have_what_hear_asks_for(model):
    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        assert callable(getattr(hear, name))
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate in (16000, 22050, 44100, 48000)
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 192


def test_timestamp_and_scene_embeddings_follow_the_contract(model):
    audio = _noise(16, 2.0)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    rows = model.rows_for_samples(audio.shape[1])  # 198 fbank frames -> 13 patch rows
    assert rows == 13
    assert embeddings.dtype == torch.float32 and embeddings.shape == (16, rows, model.timestamp_embedding_size)
    assert timestamps.shape == embeddings.shape[:2]
    steps = torch.diff(timestamps)
    assert torch.all((steps - 160.0).abs() < 1e-3)  # milliseconds, one per 160 ms
    assert timestamps[0, 0] == pytest.approx(87.5)  # the first row's 16 frames span 0 to 175 ms
    assert timestamps[0, -1] - 87.5 < 1000 * audio.shape[1] / RATE  # every row starts inside the clip
    assert torch.isfinite(embeddings).all()

    scene = hear.get_scene_embeddings(_noise(8, 3.74), model)
    assert scene.dtype == torch.float32 and scene.shape == (8, model.scene_embedding_size)


def test_a_batch_of_mixed_content_embeds_each_clip_as_if_alone(model):
    t = torch.arange(int(1.5 * RATE)) / RATE
    clips = torch.stack([torch.zeros_like(t), 0.5 * torch.sin(2 * torch.pi * 440 * t), _noise(1, 1.5, seed=3)[0], 0.1 * torch.sign(torch.sin(2 * torch.pi * 3 * t))])
    frames, stamps = hear.get_timestamp_embeddings(clips, model)
    scene = hear.get_scene_embeddings(clips, model)
    for i in range(len(clips)):
        alone, _ = hear.get_timestamp_embeddings(clips[i : i + 1], model)
        torch.testing.assert_close(frames[i], alone[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(scene[i], hear.get_scene_embeddings(clips[i : i + 1], model)[0], rtol=1e-4, atol=1e-5)
    assert torch.cdist(scene, scene)[~torch.eye(4, dtype=torch.bool)].min() > 1e-3  # different sounds, different embeddings


def test_windows_overlap_by_half_and_rows_average_the_windows_that_cover_them(encoder_dir):
    """Replay by hand: a clip of 8 patch rows gets windows at rows 0, 2, 4; row r averages the
    frequency-mean tokens of every window holding it, the clip embedding their class tokens."""
    embedder = ClipEmbedder.from_folder(encoder_dir)
    audio = _noise(2, 1.28, seed=5)  # 126 frames -> 8 rows (the last padded)
    spec = embedder.spectrogram(audio)
    assert spec.shape[2] == 128 and embedder._window_starts(8) == [0, 2, 4]
    frames, clip = embedder(audio)
    tokens = {s: embedder.encoder.forward_features(spec[:, :, 16 * s : 16 * s + WINDOW]) for s in (0, 2, 4)}
    rows = {s: tokens[s][:, 1:].reshape(2, 4, 8, 192).mean(2) for s in tokens}  # (B, 4 rows, D)
    torch.testing.assert_close(frames[:, 0], rows[0][:, 0])
    torch.testing.assert_close(frames[:, 3], (rows[0][:, 3] + rows[2][:, 1]) / 2)
    torch.testing.assert_close(frames[:, 5], (rows[2][:, 3] + rows[4][:, 1]) / 2)
    torch.testing.assert_close(frames[:, 7], rows[4][:, 3])
    torch.testing.assert_close(clip, sum(tokens[s][:, 0] for s in tokens) / 3)


def test_clips_shorter_than_one_window_and_long_clips(model):
    short, _ = hear.get_timestamp_embeddings(_noise(2, 0.3), model)  # 28 frames: 2 rows, padded to one window
    assert short.shape == (2, 2, 192)
    long, stamps = hear.get_timestamp_embeddings(_noise(1, 20.0), model)
    assert long.shape == (1, model.rows_for_samples(20 * RATE), 192) and stamps[0, -1] < 20_000
    with pytest.raises(ValueError, match="shorter than one 25 ms"):
        hear.get_scene_embeddings(torch.zeros(1, 100), model)


def test_load_model_takes_the_weights_file_and_explains_a_missing_encoder(encoder_dir, tmp_path):
    from_file = hear.load_model(str(encoder_dir / "model.safetensors"))
    audio = _noise(1, 1.0)
    torch.testing.assert_close(hear.get_scene_embeddings(audio, from_file), hear.get_scene_embeddings(audio, hear.load_model(str(encoder_dir))))
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        find_default_encoder(tmp_path)
