"""asit.predict on files of any rate and length, with a classifier written by asit.finetune."""

import warnings

import pytest
import torch

from asit.audio import AudioError, samples_for_frames
from asit.finetune import finetune
from asit.predict import Predictor, main, predict, window_starts
from asit.tasks import get_task
from layouts import write_speech_commands, write_wav

WORDS = ("yes", "no", "up", "down", "left", "right")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = write_speech_commands(tmp_path_factory.mktemp("sc"), version=2, words=WORDS, speakers=3)
    out = tmp_path_factory.mktemp("out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a subset of the 35 words
        result = finetune(get_task("ks2", "smoke"), "fixture", root, checkpoint="none", output_dir=out, device="cpu", progress=False)
    return result["classifier_paths"][0]


def test_window_starts_cover_the_clip():
    assert window_starts(100, 200, 10) == [0]
    starts = window_starts(1000, 400, 10)
    assert starts[0] == 0 and starts[-1] == 600  # the last window ends at the clip's end
    assert all(b - a <= 200 for a, b in zip(starts, starts[1:]))  # 50 % overlap: no gap


def test_predict_any_rate_and_length(tmp_path, classifier):
    files = [
        write_wav(tmp_path / "short_8k.wav", 0.3, 8000, freq=300),  # shorter than the input: padded
        write_wav(tmp_path / "long_44k.wav", 3.0, 44100, freq=500),  # several windows, averaged
        write_wav(tmp_path / "exact_16k.flac", 0.655, 16000, freq=250),
    ]
    results = predict(files, classifier, top_k=3)
    assert len(results) == 3
    for best in results:
        assert len(best) == 3
        labels, scores = zip(*best)
        assert set(labels) <= set(WORDS) and len(set(labels)) == 3
        assert list(scores) == sorted(scores, reverse=True)
        assert all(0 <= s <= 1 for s in scores)
    assert predict(files[0], classifier, top_k=50)[0].__len__() == len(WORDS)  # k clipped to the classes


def test_long_clip_scores_are_the_mean_over_windows(tmp_path, classifier):
    predictor = Predictor(classifier)
    path = write_wav(tmp_path / "long.wav", 2.0, 16000, freq=400)
    from asit.audio import load_audio, prepare_wave

    wave = prepare_wave(load_audio(path, 16000))
    waves, lengths = predictor.windows(wave)
    assert waves.shape[0] > 1 and waves.shape[1] == samples_for_frames(predictor.num_frames, 16000)
    with torch.no_grad():
        per_window = torch.softmax(predictor.model(predictor.frontend(waves, lengths)), dim=-1)
    torch.testing.assert_close(predictor.scores(path), per_window.mean(dim=0), rtol=1e-5, atol=1e-6)


def test_bad_file_and_encoder_only_checkpoint(tmp_path, classifier, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioError):
        predict([bad], classifier)
    good = write_wav(tmp_path / "good.wav", 0.5)
    assert main([str(good), str(bad), "--checkpoint", str(classifier), "--top-k", "2"]) == 1
    out = capsys.readouterr()
    assert "good.wav" in out.out and "bad.wav" in out.err
    from asit import models

    encoder_dir = models.save_encoder(models.create_encoder("tiny", 64), tmp_path / "encoder", {})
    with pytest.raises(ValueError, match="not a fine-tuned classifier"):
        predict([good], encoder_dir or tmp_path / "encoder")


def test_a_mean_pooled_classifier_scores_files_as_fine_tuning_scored_them(tmp_path):
    """The saved classifier keeps its read-out (the cpu preset's pool="mean"): asit.predict gives each
    test file the scores that fine-tuning's own evaluation gave it."""
    from asit.finetune import build_datasets, subset_paths

    root = write_speech_commands(tmp_path / "sc", version=2, words=WORDS, speakers=3)
    task = get_task("ks2", "smoke", pool="mean", eval_windows=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run = finetune(task, "fixture", root, checkpoint="none", output_dir=tmp_path / "out", device="cpu", progress=False)
        test_files = subset_paths(build_datasets(task, root, fold=None)["test"])
    predictor = Predictor(run["classifier_paths"][0])
    assert predictor.model.pool == "mean"
    expected = torch.as_tensor(run["predictions"]["scores"])
    assert expected.shape[0] == len(test_files) > 0
    got = torch.stack([predictor.scores(path) for path in test_files])
    order = [predictor.classes.index(c) for c in run["classes"]]  # the same class order either way
    torch.testing.assert_close(got[:, order], expected.float(), atol=1e-4, rtol=0)
