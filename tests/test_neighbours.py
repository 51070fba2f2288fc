"""asit.neighbours: what a clip's nearest neighbour shares with it."""

import json

import numpy as np
import pytest
import torch

from asit import neighbours, probe
from asit.models import create_encoder, save_encoder
from layouts import write_speech_commands


def test_features_grouped_by_voice_put_each_clip_next_to_its_own_speaker():
    words = np.array([0, 1, 2] * 3)
    speakers = np.repeat([0, 1, 2], 3)  # every speaker says every word once, as in the built-in KS2
    rng = np.random.default_rng(0)
    features = 10 * np.eye(3)[speakers] + np.eye(3)[words] + 0.01 * rng.standard_normal((9, 3))
    neighbour = neighbours.nearest_neighbours(features)
    assert (neighbour != np.arange(9)).all()  # a clip is never its own neighbour
    assert neighbours.agreement(neighbour, speakers) == 100.0
    assert neighbours.agreement(neighbour, words) == 0.0
    # with each speaker's mean removed, only the word is left to go by
    centred = neighbours.centred_by(features, speakers)
    assert neighbours.agreement(neighbours.nearest_neighbours(centred), words) == 100.0


def test_chance_agreement_is_the_rate_of_a_random_other_clip():
    # a: 1 of 4 others shares it; b: 2 of 4 others
    assert neighbours.chance_agreement(np.array(["a", "a", "b", "b", "b"])) == pytest.approx(100 * (2 * 0.25 + 3 * 0.5) / 5)
    with pytest.raises(ValueError, match="at least 2 clips"):
        neighbours.nearest_neighbours(np.ones((1, 4)))


def test_speaker_comes_from_the_speech_commands_file_name():
    assert neighbours.speaker_of("data/yes/0a7c2a8d_nohash_1.wav") == "0a7c2a8d"
    with pytest.raises(ValueError, match="clip_07.wav: not a Speech Commands file name"):
        neighbours.speaker_of("data/yes/clip_07.wav")


def test_cli_on_a_speech_commands_layout_with_two_test_speakers(tmp_path, monkeypatch):
    words = ("yes", "no", "up")
    root = write_speech_commands(tmp_path / "sc", words=words, speakers=4, noise_files=0)
    test_speakers = (f"{0xA0B0C0:08x}", f"{0xA0B0C3:08x}")  # speakers 0 and 3 test, 2 trains, 1 validates
    (root / "testing_list.txt").write_text("".join(f"{w}/{s}_nohash_0.wav\n" for w in words for s in test_speakers))
    monkeypatch.setattr(probe, "PROBE_TASKS", {"ks2": probe.ProbeTask("speech_commands_v2", "train", "test", 64, {"protocol": "ks2"})})
    torch.manual_seed(1)
    encoder = save_encoder(create_encoder("tiny", num_frames=32, depth=1).eval(), tmp_path / "run" / "encoder")
    result = neighbours.main([str(encoder), "--name", "tiny", "--seeds", "2", "--data-root", str(root),
                              "--output-dir", str(tmp_path / "results")])
    assert (result["clips"], result["speakers"], result["words"]) == (6, 2, 3) and result["seconds"] >= 0  # 0.0 s rounded
    assert result["chance"] == pytest.approx({"word": 20.0, "speaker": 40.0})  # 1 and 2 of the 5 other clips
    fbank = result["rows"][0]
    # each word is one tone, whoever says it: the fbank's neighbour is the same word, other speaker
    assert (fbank["features"], fbank["same_word"], fbank["same_speaker"]) == ("fbank", 100.0, 0.0)
    assert [(r["features"], r["pool"], r["seed"]) for r in result["rows"][1:]] == [
        (name, pool, seed) for name, seed in (("pretrained", None), ("random init", 0), ("random init", 1)) for pool in probe.POOLS]
    written = tmp_path / "results" / "label_efficiency" / "tiny_neighbours.json"
    assert json.loads(written.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    table = written.with_suffix(".md").read_text()
    assert "| fbank | mel mean+std | 100.0 | 0.0 |" in table and "| random init (2 seeds) | token |" in table


def test_findings_say_which_side_of_the_random_inits_range_the_pretrained_rate_falls():
    def row(features, pool, seed, speaker, word, removed):
        return {"features": features, "pool": pool, "seed": seed, "same_speaker": speaker,
                "same_word": word, "same_word_speaker_removed": removed}

    rows = [row("fbank", "mel mean+std", None, 90.0, 5.0, 22.0)]
    rows += [row("pretrained", pool, None, 95.0, 1.0, 3.0 if pool == "token" else 9.0) for pool in probe.POOLS]
    rows += [row("random init", pool, s, 70.0 + s, 1.0 - s, 2.0 + s if pool == "token" else 15.0 + s)
             for s in (0, 1) for pool in probe.POOLS]
    text = neighbours.findings({"chance": {"word": 2.5, "speaker": 10.8}, "rows": rows})
    assert "same speaker in 95.0 % pretrained, 70.5 [70.0, 71.0] % from random inits (above their range)" in text
    assert "same word in 1.0 % pretrained, 0.5 [0.0, 1.0] % from random inits (inside their range)" in text
    assert "class token 3.0 % pretrained, 2.5 [2.0, 3.0] % from random inits (inside their range)" in text
    assert "per-band read-out 9.0 % pretrained, 15.5 [15.0, 16.0] % from random inits (below their range)" in text
    assert "pooled fbank 22.0 %" in text and "chance 10.8 %" in text


def test_features_that_carry_the_channel_pair_each_training_clip_with_its_own_video():
    speakers, videos = np.repeat([0, 1, 2], 4), np.repeat(np.arange(6), 2)  # 3 speakers x 2 videos x 2 clips
    rng = np.random.default_rng(0)
    test_speakers = np.array([0, 1, 2])  # one clip each, from a seventh, eighth and ninth video

    def clips(with_channel):  # columns: the voice of each speaker, then (or not) the channel of each of the 9 videos
        train, test = np.eye(3)[speakers], np.eye(3)[test_speakers]
        if with_channel:
            train, test = np.hstack([train, 10 * np.eye(9)[videos]]), np.hstack([test, 10 * np.eye(9)[[6, 7, 8]]])
        return train + 0.01 * rng.standard_normal(train.shape), test + 0.01 * rng.standard_normal(test.shape)

    groups = {"speaker": speakers, "video": videos, "test_speaker": test_speakers}
    channel_bound = neighbours.channel_row("x", "token", None, *clips(True), groups)
    assert (channel_bound["same_video"], channel_bound["same_speaker_other_video"]) == (100.0, 0.0)
    voice_bound = neighbours.channel_row("x", "token", None, *clips(False), groups)  # the voice alone
    assert voice_bound["same_video"] + voice_bound["same_speaker_other_video"] == 100.0
    assert voice_bound["test_speaker"] == 100.0  # a new video's clip still lands on its voice


def test_nearest_in_finds_each_querys_closest_reference_row():
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    queries = np.array([[0.1, 2.0], [3.0, 0.2], [-2.0, -1.9]])
    assert neighbours.nearest_in(reference, queries).tolist() == [1, 0, 2]


def test_video_comes_from_the_voxceleb1_folder():
    assert neighbours.video_of("wav/id10003/kBnDWP431tn/00002.wav") == "id10003/kBnDWP431tn"
    with pytest.raises(ValueError, match="00002.wav: not a VoxCeleb1 file path"):
        neighbours.video_of("00002.wav")


def test_cli_on_a_voxceleb1_layout_writes_the_speaker_table(tmp_path, monkeypatch):
    from layouts import write_voxceleb1

    root = write_voxceleb1(tmp_path / "vox", speakers=3, videos=4, utterances=2)  # 2 training videos a speaker
    monkeypatch.setattr(probe, "PROBE_TASKS", {"voxceleb1": probe.ProbeTask("voxceleb1", "train", "test", 32)})
    torch.manual_seed(2)
    encoder = save_encoder(create_encoder("tiny", num_frames=32, depth=1).eval(), tmp_path / "run" / "encoder")
    result = neighbours.main([str(encoder), "--name", "tiny", "--task", "voxceleb1", "--seeds", "2",
                              "--data-root", str(root), "--output-dir", str(tmp_path / "results")])
    assert (result["clips"], result["test_clips"], result["speakers"], result["videos_per_speaker"]) == (12, 6, 3, 2)
    # of a clip's 11 others: 1 from its video, 2 of its speaker from the other video; 3 speakers for a test clip
    assert result["chance"] == pytest.approx({"video": 100 / 11, "speaker_other_video": 200 / 11, "test_speaker": 100 / 3})
    assert [(r["features"], r["pool"], r["seed"]) for r in result["rows"]] == [("fbank", "mel mean+std", None)] + [
        (name, pool, seed) for name, seed in (("pretrained", None), ("random init", 0), ("random init", 1)) for pool in probe.POOLS]
    for row in result["rows"]:
        assert 0 <= row["same_video"] + row["same_speaker_other_video"] <= 100 and 0 <= row["test_speaker"] <= 100
    written = tmp_path / "results" / "label_efficiency" / "tiny_neighbours_voxceleb1.json"
    assert json.loads(written.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    table = written.with_suffix(".md").read_text()
    assert "| features | read-out | same video | same speaker, another video | test clip: same speaker |" in table
    assert "| random init (2 seeds) | dino |" in table
    assert "`dino`" in neighbours.speaker_findings(result) and "chance 33.3 %" in neighbours.speaker_findings(result)
