"""asit.xares.ASiTEncoder is the encoder X-ARES expects: xares's own checker accepts it, and its
frames are the HEAR timestamp embeddings."""

from __future__ import annotations

import torch

from asit import hear, models
from asit.audio import NormStats
from asit.xares import ASiTEncoder


def test_xares_accepts_the_encoder_and_gets_160_ms_frames(tmp_path):
    from xares.audio_encoder_checker import check_audio_encoder

    torch.manual_seed(0)
    directory = models.save_encoder(models.create_encoder("tiny", 64, depth=2), tmp_path / "encoder", stats=NormStats(-6.0, 4.0))
    encoder = ASiTEncoder(directory)
    assert check_audio_encoder(encoder)  # name ends in Encoder, attributes, (2, 50000) -> (2, T', output_dim)
    assert (encoder.sampling_rate, encoder.output_dim, encoder.hop_size_in_ms) == (16000, 192, 160.0)
    audio = torch.randn(2, 50_000)
    frames = encoder(audio)
    assert frames.shape == (2, 20, 192)  # 3125 ms of audio / 160 ms per frame, the last one padded
    assert abs(frames.shape[1] * encoder.hop_size_in_ms - 1000 * audio.shape[1] / encoder.sampling_rate) < encoder.hop_size_in_ms
    expected, _ = hear.get_timestamp_embeddings(audio, hear.load_model(str(directory)))
    torch.testing.assert_close(frames, expected)
    assert encoder(audio[0]).shape == (1, 20, 192)  # a single clip (T,) is a batch of one
