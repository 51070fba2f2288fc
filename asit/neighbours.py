"""What a clip's nearest neighbour shares with it: the class, the speaker, or the channel.

A few-shot probe on frozen features can only work when the clips of one class lie close together.
The nearest-neighbour test asks that directly, with nothing learned: for each test clip, the
clip most similar to it (cosine similarity of standardised features, itself left out), and whether
the two share the word, or the speaker. On the built-in Speech Commands every test speaker says
every word once, so features that group clips by voice put each clip next to *another* word of
its own speaker: the same-speaker rate near 100 %, the same-word rate below chance. A third rate
removes each speaker's mean feature first (an oracle that knows who speaks): are the words still
there under the voice, or gone?

On the built-in VoxCeleb1 (``--task voxceleb1``) the question is the speakers' own: each speaker's
training clips come from four "videos", each with its own channel (noise floor, band limit, level),
and the test clips from a fifth. Features that match clips by their channel put a training clip next
to the other clip of its own video, and a test clip, whose video no training clip shares, next to
whichever training video sounds alike: the same-video rate high, the test clip's neighbour rarely
its speaker. (Removing each video's mean would remove its speaker's voice with it: here a video
holds one speaker, so no oracle separates the two as removing each speaker's mean does above.)

    python -m asit.neighbours results/course_checkpoint/encoder --name course
        # -> results/label_efficiency/course_neighbours.json and .md
    python -m asit.neighbours results/course_checkpoint/encoder --name course --task voxceleb1
        # -> results/label_efficiency/course_neighbours_voxceleb1.json and .md

The speaker is read off the file name, Speech Commands' ``<speaker>_nohash_<n>.wav``; VoxCeleb1's
video off its folder, ``<speaker>/<video>/<n>.wav``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from asit import probe
from asit.label_efficiency import PRETRAINED, PROBE_POOL, RANDOM, _features

TASK = "ks2"
SPEAKER_TASK = "voxceleb1"


def _unit_rows(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x``'s columns standardised by ``reference``'s (no column dominates by its scale alone), rows
    scaled to unit length, so that a dot product is a cosine similarity."""
    x = (x - reference.mean(0)) / (reference.std(0) + 1e-8)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(features: np.ndarray) -> np.ndarray:
    """``(M, D)`` -> ``(M,)``: each row's most cosine-similar other row, on standardised columns."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) < 2:
        raise ValueError(f"nearest neighbours need at least 2 clips, got {len(x)}")
    x = _unit_rows(x, x)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


def agreement(neighbour: np.ndarray, labels: np.ndarray) -> float:
    """Percent of clips whose nearest neighbour has the same label."""
    labels = np.asarray(labels)
    return float(100 * np.mean(labels == labels[neighbour]))


def chance_agreement(labels: np.ndarray) -> float:
    """Percent agreement with a neighbour drawn at random among the other clips (averaged per clip)."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return float(100 * np.mean((counts[inverse] - 1) / (len(labels) - 1)))


def nearest_in(reference: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``(Q,)``: each query's most cosine-similar reference row, columns standardised by the reference."""
    ref, query = (np.asarray(x, dtype=np.float64) for x in (reference, queries))
    return (_unit_rows(query, ref) @ _unit_rows(ref, ref).T).argmax(1)


def speaker_of(path: str | Path) -> str:
    """The speaker of a Speech Commands file, ``<speaker>_nohash_<n>.wav``; a clear error otherwise."""
    name = Path(path).name
    speaker, marker, _ = name.partition("_nohash_")
    if not marker or not speaker:
        raise ValueError(f"{path}: not a Speech Commands file name (<speaker>_nohash_<n>.wav), so no speaker")
    return speaker


def _check_every_clip_read(split: "probe.ProbeSplit", data: Any, what: str) -> None:
    """``load_split`` leaves unreadable clips out; then the file names no longer line up with the clips."""
    if len(data.paths) != len(split.targets):
        raise RuntimeError(f"{len(data.paths) - len(split.targets)} clips were left out as unreadable: the "
                           f"{what} could not be matched to the clips")


def video_of(path: str | Path) -> str:
    """The video of a VoxCeleb1 file, ``<speaker>/<video>/<n>.wav``, as ``speaker/video``."""
    path = Path(path)
    if len(path.parts) < 3:
        raise ValueError(f"{path}: not a VoxCeleb1 file path (<speaker>/<video>/<n>.wav), so no video")
    return f"{path.parent.parent.name}/{path.parent.name}"


def centred_by(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` with each group's mean row subtracted from that group's rows."""
    x = np.array(values, dtype=np.float64)
    for group in np.unique(groups):
        x[groups == group] -= x[groups == group].mean(0)
    return x


def agreement_row(features: str, pool: str, seed: int | None, values: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, Any]:
    """Same-word and same-speaker rates, and the same-word rate once each speaker's mean is removed.

    The last is an oracle (it knows who speaks): it asks whether the words are in the features
    at all, only hidden under the voice, or gone.
    """
    neighbour = nearest_neighbours(values)
    row = {"features": features, "pool": pool, "seed": seed, **{f"same_{g}": agreement(neighbour, y) for g, y in groups.items()}}
    row["same_word_speaker_removed"] = agreement(nearest_neighbours(centred_by(values, groups["speaker"])), groups["word"])
    return row


def keyword_neighbours(encoder_path: str | Path, seeds: Sequence[int] = (0, 1, 2), data_root: str | Path | None = None) -> dict[str, Any]:
    """Same-word and same-speaker rates on the KS2 test split: pooled fbank, pretrained, random inits."""
    task = probe.PROBE_TASKS[TASK]
    _, train_data = probe.load_split(task, task.train_split, data_root)  # its statistics normalise the test split
    test, data = probe.load_split(task, task.test_split, data_root, stats=train_data.stats)
    _check_every_clip_read(test, data, "speakers")
    groups = {"word": test.targets, "speaker": np.array([speaker_of(p) for p in data.paths])}
    rows = [agreement_row(probe.FBANK, "mel mean+std", None, probe.pooled_fbank(test), groups)]
    pretrained = probe._encoder(encoder_path, None)
    encoders = [(PRETRAINED, None, pretrained)] + [(RANDOM, s, probe._encoder(probe.random_init(s), pretrained)) for s in seeds]
    for name, seed, encoder in encoders:
        features = _features(encoder, test)
        rows += [agreement_row(name, pool, seed, features[pool], groups) for pool in probe.POOLS]
    return {"task": TASK, "encoder": str(encoder_path), "clips": len(test.targets),
            "speakers": len(set(groups["speaker"])), "words": len(set(test.targets.tolist())),
            "chance": {g: chance_agreement(y) for g, y in groups.items()}, "rows": rows}


def channel_row(features: str, pool: str, seed: int | None, train_x: np.ndarray, test_x: np.ndarray,
                groups: dict[str, np.ndarray]) -> dict[str, Any]:
    """Same-video and same-speaker rates among the training clips, and the test clips' speaker by 1-NN.

    ``groups``: ``speaker`` and ``video`` of the training clips, ``test_speaker`` of the test clips.
    ``same_speaker_other_video``: the neighbour is the same voice through another channel.
    """
    speaker, video = groups["speaker"], groups["video"]
    neighbour = nearest_neighbours(train_x)
    other_video = video != video[neighbour]
    return {"features": features, "pool": pool, "seed": seed,
            "same_video": agreement(neighbour, video),
            "same_speaker_other_video": float(100 * np.mean((speaker == speaker[neighbour]) & other_video)),
            "test_speaker": float(100 * np.mean(speaker[nearest_in(train_x, test_x)] == groups["test_speaker"]))}


def speaker_neighbours(encoder_path: str | Path, seeds: Sequence[int] = (0, 1, 2), data_root: str | Path | None = None) -> dict[str, Any]:
    """Channel against voice on the VoxCeleb1 training clips: pooled fbank, pretrained, random inits."""
    task = probe.PROBE_TASKS[SPEAKER_TASK]
    train, train_data = probe.load_split(task, task.train_split, data_root)
    test, test_data = probe.load_split(task, task.test_split, data_root, stats=train_data.stats)
    _check_every_clip_read(train, train_data, "videos")
    _check_every_clip_read(test, test_data, "speakers")
    groups = {"speaker": train.targets, "video": np.array([video_of(p) for p in train_data.paths]),
              "test_speaker": test.targets}
    rows = [channel_row(probe.FBANK, "mel mean+std", None, probe.pooled_fbank(train), probe.pooled_fbank(test), groups)]
    pretrained = probe._encoder(encoder_path, None)
    encoders = [(PRETRAINED, None, pretrained)] + [(RANDOM, s, probe._encoder(probe.random_init(s), pretrained)) for s in seeds]
    for name, seed, encoder in encoders:
        train_features, test_features = _features(encoder, train), _features(encoder, test)
        rows += [channel_row(name, pool, seed, train_features[pool], test_features[pool], groups) for pool in probe.POOLS]
    speakers = len(set(train.targets.tolist()))
    # a test clip's chance: the share of the training clips that are its speaker's
    test_chance = float(100 * np.mean([np.mean(train.targets == s) for s in test.targets]))
    return {"task": SPEAKER_TASK, "encoder": str(encoder_path), "clips": len(train.targets), "test_clips": len(test.targets),
            "speakers": speakers, "videos_per_speaker": len(set(groups["video"])) / speakers,
            "chance": {"video": chance_agreement(groups["video"]),
                       "speaker_other_video": chance_agreement(groups["speaker"]) - chance_agreement(groups["video"]),
                       "test_speaker": test_chance}, "rows": rows}


def _spread(values: list[float]) -> str:
    return f"{np.mean(values):.1f}" if len(values) == 1 else f"{np.mean(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def _table_rows(result: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """One table row per (features, read-out), its rates as mean [min, max] over the seeds."""
    lines = []
    for features, pool in dict.fromkeys((r["features"], r["pool"]) for r in result["rows"]):
        rows = [r for r in result["rows"] if (r["features"], r["pool"]) == (features, pool)]
        seeds = f" ({len(rows)} seeds)" if len(rows) > 1 else ""
        lines.append(f"| {features}{seeds} | {pool} | " + " | ".join(_spread([r[k] for r in rows]) for k in keys) + " |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The rates as a table, random inits as mean [min, max] over their seeds."""
    if result.get("task") == SPEAKER_TASK:
        return speaker_markdown(result)
    chance = result["chance"]
    lines = [f"Nearest neighbour of each of the {result['clips']} KS2 test clips ({result['words']} words, "
             f"{result['speakers']} speakers): how often it is the same word, how often the same speaker (%). "
             f"Chance: {chance['word']:.1f} and {chance['speaker']:.1f}.", "",
             "| features | read-out | same word | same speaker | same word, each speaker's mean removed (oracle) |",
             "|---|---|---|---|---|"]
    lines += _table_rows(result, ("same_word", "same_speaker", "same_word_speaker_removed"))
    return "\n".join(lines) + "\n"


def speaker_markdown(result: dict[str, Any]) -> str:
    """The channel-against-voice rates of :func:`speaker_neighbours` as a table."""
    chance = result["chance"]
    lines = [f"Nearest neighbour of each of the {result['clips']} VoxCeleb1 training clips ({result['speakers']} "
             f"speakers, {result['videos_per_speaker']:g} videos each) among the others, and of each of the "
             f"{result['test_clips']} test clips (a video of their own) among the training clips (%). Chance: "
             f"same video {chance['video']:.1f}, same speaker on another video {chance['speaker_other_video']:.1f}, "
             f"test clip's speaker {chance['test_speaker']:.1f}.", "",
             "| features | read-out | same video | same speaker, another video | test clip: same speaker |",
             "|---|---|---|---|---|"]
    lines += _table_rows(result, ("same_video", "same_speaker_other_video", "test_speaker"))
    return "\n".join(lines) + "\n"


def _rates(result: dict[str, Any], features: str, pool: str, key: str) -> list[float]:
    return [r[key] for r in result["rows"] if (r["features"], r["pool"]) == (features, pool)]


def _against_random(result: dict[str, Any], pool: str, key: str) -> str:
    """``key`` of the pretrained encoder beside the random inits' spread, and which side of it."""
    mine, theirs = np.mean(_rates(result, PRETRAINED, pool, key)), _rates(result, RANDOM, pool, key)
    side = "above" if mine > max(theirs) else "below" if mine < min(theirs) else "inside"
    return f"{mine:.1f} % pretrained, {_spread(theirs)} % from random inits ({side} their range)"


def findings(result: dict[str, Any]) -> str:
    """What the table says, in sentences built from its numbers (notebook 06 shows them).

    Pretrained against random init on the class token and the per-band read-out; "above" or
    "below" only when the pretrained rate is outside the random inits' range.
    """
    chance = result["chance"]
    fbank = {key: _rates(result, probe.FBANK, "mel mean+std", key)[0] for key in ("same_speaker", "same_word_speaker_removed")}
    return " ".join([
        f"The pooled fbank's neighbour is the same speaker in {fbank['same_speaker']:.1f} % of the clips "
        f"(chance {chance['speaker']:.1f} %).",
        f"The class token's neighbour is the same speaker in {_against_random(result, 'token', 'same_speaker')}, "
        f"and the same word in {_against_random(result, 'token', 'same_word')}; chance {chance['word']:.1f} %.",
        f"With each speaker's mean removed, the same word: pooled fbank {fbank['same_word_speaker_removed']:.1f} %; "
        f"class token {_against_random(result, 'token', 'same_word_speaker_removed')}; "
        f"per-band read-out {_against_random(result, 'bands', 'same_word_speaker_removed')}.",
    ])


def speaker_findings(result: dict[str, Any], pool: str = PROBE_POOL) -> str:
    """What the speakers' table says for one read-out (the headline probe's), built from its numbers."""
    chance = result["chance"]
    fbank = {key: _rates(result, probe.FBANK, "mel mean+std", key)[0] for key in ("same_video", "test_speaker")}
    return " ".join([
        f"Read out by `{pool}`, a training clip's nearest neighbour is the other clip of its own video in "
        f"{_against_random(result, pool, 'same_video')}; pooled fbank {fbank['same_video']:.1f} %, chance "
        f"{chance['video']:.1f} %.",
        f"It is the same speaker on another video in {_against_random(result, pool, 'same_speaker_other_video')}; "
        f"chance {chance['speaker_other_video']:.1f} %.",
        f"A test clip's nearest training clip is its own speaker in {_against_random(result, pool, 'test_speaker')}; "
        f"pooled fbank {fbank['test_speaker']:.1f} %, chance {chance['test_speaker']:.1f} %.",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m asit.neighbours", description=__doc__.split("\n\n")[0])
    parser.add_argument("encoder", help="the pretrained encoder folder (asit.pretrain's <run>/encoder)")
    parser.add_argument("--name", default="course", help="results/label_efficiency/<name>_neighbours[_voxceleb1].json")
    parser.add_argument("--task", choices=(TASK, SPEAKER_TASK), default=TASK,
                        help="ks2: word against speaker; voxceleb1: channel (video) against speaker")
    parser.add_argument("--seeds", type=int, default=3, help="random inits 0..N-1 beside the pretrained encoder")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--output-dir", default="results")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    start = time.perf_counter()
    measure = keyword_neighbours if args.task == TASK else speaker_neighbours
    result = measure(args.encoder, list(range(args.seeds)), args.data_root)
    result["seconds"] = round(time.perf_counter() - start, 1)
    suffix = "" if args.task == TASK else f"_{args.task}"
    out = Path(args.output_dir) / "label_efficiency" / f"{args.name}_neighbours{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result) + f"\nwrote {out} and {out.with_suffix('.md')}")
    return result


__all__ = ["agreement", "centred_by", "chance_agreement", "channel_row", "findings", "keyword_neighbours", "markdown",
           "nearest_in", "nearest_neighbours", "speaker_findings", "speaker_markdown", "speaker_neighbours",
           "speaker_of", "video_of", "main"]


if __name__ == "__main__":
    main()
