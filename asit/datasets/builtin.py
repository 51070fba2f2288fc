"""Built-in data sets: small, deterministic, offline stand-ins in the *official* layouts.

Nothing can be downloaded in CI or on a learner's offline laptop, yet every notebook must run. This
module synthesises four tiny data sets under ``data/builtin/`` in exactly the folder and metadata
layouts of the real ones, so the same loaders (:mod:`asit.datasets`) read built-in and real data:

========================  =====================================================================
``esc50/``                ``audio/{fold}-{src}-{take}-{target}.wav`` + ``meta/esc50.csv``
                          (``filename,fold,target,category,esc10,src_file,take``), 5 folds, 5 s
                          clips of 10 procedurally synthesised sound-event classes. ``target`` and
                          ``category`` are the *real* ESC-50 ones (dog = 0, rain = 10, ...), so the
                          targets are not contiguous: a loader maps the csv's targets to classes.
``speech_commands/``      one folder per word for all 35 words of Speech Commands V2, files
                          ``<speaker>_nohash_<n>.wav`` (1 s), spoken by many espeak-ng voices;
                          ``_background_noise_/`` and ``validation_list.txt`` /
                          ``testing_list.txt`` split *by speaker*, as in the real data set.
``voxceleb1/``            ``wav/<id1xxxx>/<video>/<nnnnn>.wav`` (2-6 s) by distinct espeak-ng
                          voices and ``iden_split.txt`` (``1`` train, ``2`` val, ``3`` test; every
                          speaker in all three; the training utterances come from four "videos",
                          i.e. recording conditions, validation and test each from another one, as
                          the identification protocol holds out videos).
``audioset/``             ``audio/*.wav`` mixtures of 1-3 event classes, ``balanced_train.json``
                          and ``eval.json`` in AST's layout (``{"data": [{"wav", "labels"}]}``,
                          paths relative to the json's folder) and ``class_labels_indices.csv``
                          with the real AudioSet ontology ids of the synthesised classes.
``unlabelled/``           ``events/*.wav`` (4 s scenes of 1-3 event classes) and ``speech/*.wav``
                          (1 s, one word from a vocabulary of command words and other words, by
                          voices drawn apart from the labelled sets'): a larger unlabelled pool
                          for pretraining only (the ``folder`` data set). No clip of any labelled
                          split is in it; it plays the part AudioSet-2M plays for ASiT.
========================  =====================================================================

Deliberate differences from the real data, all to stay small and fast:

* every file is 16 kHz mono 16-bit PCM (real ESC-50 is 44.1 kHz; the loaders resample anyway);
* AudioSet clips last 4 s instead of 10 s; the label set has only the 10 synthesised classes;
* the words, speakers and sounds are synthetic: useful to check that a pipeline learns, never as a
  measure of how well a model does on real audio.

Everything is a pure function of ``seed`` and ``scale``: the same arguments give the same bytes
(each clip draws from its own random generator, keyed by data set and index, so the thread pool's
order does not matter). Only the speech data sets need a system tool, ``espeak-ng``.

    python -m asit.datasets.builtin --out data/builtin [--seed 0] [--scale 1.0] [--only esc50,audioset]

Each data set is written into a hidden temporary folder and renamed into place when complete;
``<out>/.complete`` (a JSON summary) is written last, only when all four data sets are present, so an
interrupted run never leaves something that looks finished.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import string
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import soundfile as sf
from scipy import signal

SAMPLE_RATE = 16_000
LAYOUTS = ("esc50", "speech_commands", "voxceleb1", "audioset", "unlabelled")
COMPLETE_MARKER = ".complete"

ESC50_SECONDS = 5.0
ESC50_FOLDS = 5
AUDIOSET_SECONDS = 4.0  # real clips last 10 s; 4 s keeps the data small
SPEECH_SECONDS = 1.0
VOX_MIN_SECONDS, VOX_MAX_SECONDS = 2.0, 6.0

# Sizes at scale 1.0 (about 100 MB in all). Counts shrink with `scale` down to the least that keeps
# every layout valid (one clip per fold and class, one speaker per split, ...). The training splits
# are as small as a CPU budget needs; the test splits are larger than the real proportions, so
# that a difference of a few points between two encoders is more than one or two clips.
ESC50_CLIPS_PER_CLASS = 20  # 4 per fold; the real data set has 40 (8 per fold)
SPEECH_SPEAKERS = (12, 3, 9)  # train / validation / test speakers (voices), each saying all 35 words
VOX_SPEAKERS = 12
VOX_UTTERANCES = (8, 2, 6)  # per speaker: train / validation / test utterances
VOX_TRAIN_VIDEOS = 4  # per speaker: the training utterances come round-robin from this many videos
# (channels), so that no one channel stands for a speaker (a real VoxCeleb1 speaker has about 18 videos;
# results/HISTORY.md says what 2 channels did)
AUDIOSET_TRAIN, AUDIOSET_EVAL = 90, 90
NOISE_SECONDS = 12.0  # per background-noise file (the real ones last about 60 s)
# The unlabelled pool: cheap to make, and the fbank cache makes its epochs cheap. Self-supervised
# pretraining pays off with many more unlabelled clips than labelled ones (ASiT: AS-2M against
# ESC-50's 2,000 clips); the labelled training splits above hold a few hundred.
UNLABELLED_EVENT_CLIPS = 1200  # 4 s scenes (AUDIOSET_SECONDS) of 1-3 of the event classes
UNLABELLED_SPEECH_CLIPS = 1200  # 1 s clips of one word each
UNLABELLED_VOICES = 60  # drawn with their own generator: other speeds and pitches than the labelled sets'
# Words of the unlabelled speech: the command words among as many others, as ordinary speech holds them.
OTHER_WORDS = (
    "apple", "baker", "circle", "daisy", "engine", "fever", "garden", "honey", "island", "jacket",
    "kettle", "lemon", "mirror", "number", "orange", "pencil", "quiet", "river", "sugar", "table",
    "under", "velvet", "window", "yellow", "zebra", "about", "because", "little", "morning", "people",
    "water", "letter", "always", "maybe", "thank",
)  # fmt: skip

SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four",
    "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right",
    "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # fmt: skip

ESPEAK = "espeak-ng"
ESPEAK_RATE = 22_050  # espeak-ng's output rate
# English voices ("accents") shipped with espeak-ng, and voice variants (timbre, gender).
ESPEAK_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "Andy", "Annie", "Denis", "Lee", "edward", "grandpa", "iven",
)  # fmt: skip

VOX_SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "I think we should leave early tomorrow to avoid the traffic.",
    "She sells sea shells by the sea shore every summer morning.",
    "Please remember to bring the documents to the meeting on Friday.",
    "My grandfather used to tell stories about the old harbour.",
    "It was the best film I have seen in a very long time.",
    "The weather has been surprisingly warm for this time of year.",
    "We spent the whole afternoon walking through the botanical gardens.",
    "Could you tell me how to get to the nearest train station?",
    "Learning a new language takes patience, practice and a little courage.",
    "The orchestra played the final movement with remarkable energy.",
    "Honestly, I never expected the project to become so popular.",
    "They opened a small bakery on the corner of our street.",
    "After the match, the players thanked the supporters for coming.",
    "Scientists have discovered a new species of frog in the rainforest.",
    "The children built a sandcastle before the tide came in.",
    "Every morning he drinks two cups of strong black coffee.",
    "Our flight was delayed by three hours because of the storm.",
    "The museum will be closed on Monday for maintenance work.",
    "I would rather stay at home and read a good book tonight.",
    "The committee will announce its decision at the end of the month.",
    "Cooking for a large family requires planning and a big kitchen.",
    "The mountain path was steep, narrow and covered with loose stones.",
    "We need to talk about the budget before we make any promises.",
)


class MissingToolError(RuntimeError):
    """A system program the generator needs is not installed; the message says how to install it."""


# ---------------------------------------------------------------------------------------------
# Signal helpers (float64 numpy arrays at SAMPLE_RATE)
# ---------------------------------------------------------------------------------------------


def _rng(seed: int, layout: str, *index: int) -> np.random.Generator:
    """An independent generator per (seed, data set, item): results do not depend on build order."""
    return np.random.default_rng([seed, zlib.crc32(layout.encode()), *index])


def _db(value: float) -> float:
    return 10.0 ** (value / 20.0)


def _normalize_peak(x: np.ndarray, peak: float = 1.0) -> np.ndarray:
    top = np.abs(x).max()
    return x * (peak / top) if top > 0 else x


def _colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= 1.0 / np.maximum(freqs, 20.0) ** (exponent / 2)
    x = np.fft.irfft(spectrum, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _filter(x: np.ndarray, kind: str, cutoff: float | Sequence[float], order: int = 2) -> np.ndarray:
    sos = signal.butter(order, cutoff, btype=kind, fs=SAMPLE_RATE, output="sos")
    return signal.sosfilt(sos, x)


def _add(out: np.ndarray, event: np.ndarray, start: int) -> None:
    """Add ``event`` into ``out`` at sample ``start``, clipped to ``out``'s bounds."""
    start = int(start)
    if start >= len(out) or start + len(event) <= 0:
        return
    lo = max(0, -start)
    hi = min(len(event), len(out) - start)
    out[start + lo : start + hi] += event[lo:hi]


def _decay(n: int, tau: float, attack: float = 0.002) -> np.ndarray:
    """Envelope: linear attack over ``attack`` s, exponential decay with time constant ``tau`` s."""
    t = np.arange(n) / SAMPLE_RATE
    return np.minimum(1.0, t / attack) * np.exp(-t / tau)


def _fade(n: int, seconds: float = 0.05) -> np.ndarray:
    ramp = min(n // 2, int(seconds * SAMPLE_RATE))
    env = np.ones(n)
    if ramp > 0:
        env[:ramp] = np.linspace(0, 1, ramp)
        env[n - ramp :] = np.linspace(1, 0, ramp)
    return env


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)


def _write_wav(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), _to_int16(x), SAMPLE_RATE, subtype="PCM_16", format="WAV")


# ---------------------------------------------------------------------------------------------
# Sound-event synthesisers: synth(rng, num_samples) -> waveform with peak 1
# ---------------------------------------------------------------------------------------------


def _synth_dog(rng: np.random.Generator, n: int) -> np.ndarray:
    """Barks: short harmonic bursts whose pitch rises then falls, with a breathy noise part."""
    out = np.zeros(n)
    f0 = rng.uniform(250, 650)  # a small dog barks higher
    formant = rng.uniform(800, 1800)
    t_bark = rng.uniform(0.0, 0.6)
    while t_bark < n / SAMPLE_RATE - 0.2:
        for _ in range(rng.integers(1, 4)):  # barks come in short runs
            length = int(rng.uniform(0.08, 0.22) * SAMPLE_RATE)
            u = np.linspace(0, 1, length)
            f = f0 * rng.uniform(0.9, 1.1) * (1 + 0.35 * np.sin(np.pi * u) - 0.25 * u)
            phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
            k = np.arange(1, 13)[:, None]
            amps = 1 / k + np.exp(-(((k * f0 - formant) / 500) ** 2))
            bark = (amps * np.sin(k * phase)).sum(0)
            bark += 0.4 * _filter(rng.standard_normal(length), "bandpass", (500, 4000)) * bark.std()
            _add(out, bark * _decay(length, length / SAMPLE_RATE / 3, 0.005), t_bark * SAMPLE_RATE)
            t_bark += length / SAMPLE_RATE + rng.uniform(0.08, 0.3)
        t_bark += rng.uniform(0.4, 1.5)
    return _normalize_peak(out)


def _synth_siren(rng: np.random.Generator, n: int) -> np.ndarray:
    """A two-tone sweep: slow 'wail' or fast 'yelp', square-ish timbre, passing by (loudness swell)."""
    t = np.arange(n) / SAMPLE_RATE
    low = rng.uniform(500, 850)
    high = low * rng.uniform(1.5, 2.2)
    rate = rng.uniform(0.2, 0.45) if rng.random() < 0.5 else rng.uniform(2.5, 5.0)
    f = low + (high - low) * (0.5 - 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    x = np.sin(phase) + 0.45 * np.sin(3 * phase) + 0.2 * np.sin(5 * phase) + 0.3 * np.sin(2 * phase)
    centre, width = rng.uniform(0.2, 0.8) * t[-1], rng.uniform(1.5, 4.0)
    swell = 0.25 + np.exp(-(((t - centre) / width) ** 2))
    return _normalize_peak(x * swell)


def _synth_rain(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rain: high-passed coloured noise plus many tiny drop clicks, intensity drifting slowly."""
    x = _filter(_colored_noise(rng, n, rng.uniform(0.0, 1.0)), "highpass", rng.uniform(300, 1500))
    drops = np.zeros(n)
    count = int(rng.uniform(20, 80) * n / SAMPLE_RATE)
    positions = rng.integers(0, n, count)
    drops[positions] = rng.uniform(0.5, 4.0, count) * rng.choice([-1, 1], count)
    drops = signal.lfilter([1.0], [1.0, -0.6], drops)  # short exponential tails
    t = np.arange(n) / SAMPLE_RATE
    drift = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    return _normalize_peak((x + _filter(drops, "highpass", 1000)) * drift)


def _synth_clock_tick(rng: np.random.Generator, n: int) -> np.ndarray:
    """A clock: regular tick-tock of two resonant clicks."""
    out = np.zeros(n)
    period = rng.uniform(0.25, 1.0)
    f_tick = rng.uniform(2000, 5000)
    f_tock = f_tick * rng.uniform(0.6, 0.85)
    tau = rng.uniform(0.002, 0.006)
    length = int(0.03 * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    for i, start in enumerate(np.arange(rng.uniform(0, period), n / SAMPLE_RATE, period)):
        f = f_tick if i % 2 == 0 else f_tock
        click = np.sin(2 * np.pi * f * t) * np.exp(-t / tau) + 0.2 * rng.standard_normal(length) * np.exp(-t / 0.001)
        _add(out, click * rng.uniform(0.8, 1.0), start * SAMPLE_RATE)
    return _normalize_peak(out)


def _synth_engine(rng: np.random.Generator, n: int) -> np.ndarray:
    """An engine: low firing frequency with many harmonics, revving slowly, plus brown rumble."""
    t = np.arange(n) / SAMPLE_RATE
    f_fire = rng.uniform(25, 60)
    f = f_fire * (1 + rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    x = np.zeros(n)
    for k in range(1, 31):
        x += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**0.8
    x *= 1 + 0.3 * np.sin(phase / 2)  # uneven cylinders
    rumble = _filter(_colored_noise(rng, n, 2.0), "lowpass", 400)
    return _normalize_peak(x / np.abs(x).max() + rng.uniform(0.1, 0.5) * rumble / np.abs(rumble).max())


def _synth_chirping_birds(rng: np.random.Generator, n: int) -> np.ndarray:
    """Birds: bursts of short, fast frequency sweeps between 2 and 7 kHz."""
    out = np.zeros(n)
    species = [(rng.uniform(2500, 5000), rng.uniform(0.6, 1.6)) for _ in range(rng.integers(1, 3))]
    for _ in range(rng.integers(3, 10)):
        base, ratio = species[rng.integers(len(species))]
        start = rng.uniform(0, n / SAMPLE_RATE)
        for _ in range(rng.integers(2, 7)):
            length = int(rng.uniform(0.04, 0.12) * SAMPLE_RATE)
            u = np.linspace(0, 1, length)
            f = base * rng.uniform(0.95, 1.05) * ratio**u * (1 + 0.05 * np.sin(2 * np.pi * 40 * u))
            chirp = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.hanning(length)
            _add(out, chirp * rng.uniform(0.4, 1.0), start * SAMPLE_RATE)
            start += length / SAMPLE_RATE + rng.uniform(0.02, 0.1)
    return _normalize_peak(out)


def _synth_door_wood_knock(rng: np.random.Generator, n: int) -> np.ndarray:
    """Knocks on wood: runs of 2-5 damped low resonances with a click on top."""
    out = np.zeros(n)
    f_base = rng.uniform(120, 320)
    modes = f_base * np.array([1.0, 2.3, 3.9])
    length = int(0.12 * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    start = rng.uniform(0.1, 1.5)
    while start < n / SAMPLE_RATE - 0.3:
        for _ in range(rng.integers(2, 6)):
            taus = rng.uniform(0.01, 0.04, 3)
            knock = (np.sin(2 * np.pi * modes[:, None] * t) * np.exp(-t / taus[:, None]) * [[1.0], [0.6], [0.3]]).sum(0)
            knock += 0.5 * rng.standard_normal(length) * np.exp(-t / 0.0015)
            _add(out, knock * rng.uniform(0.7, 1.0), start * SAMPLE_RATE)
            start += rng.uniform(0.12, 0.25)
        start += rng.uniform(0.8, 2.0)
    return _normalize_peak(out)


def _synth_church_bells(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bells: inharmonic partials (hum, prime, tierce, quint, nominal...) with long decays."""
    out = np.zeros(n)
    ratios = np.array([0.5, 1.0, 1.2, 1.5, 2.0, 2.5, 2.67, 3.0, 4.0])
    amps = np.array([0.6, 1.0, 0.7, 0.4, 0.8, 0.3, 0.25, 0.2, 0.1])
    bells = rng.uniform(200, 600) * np.array([1.0, rng.uniform(0.7, 0.9)])  # ding-dong pair
    interval = rng.uniform(0.6, 1.6)
    for i, start in enumerate(np.arange(rng.uniform(0, 0.5), n / SAMPLE_RATE - 0.1, interval)):
        length = n - int(start * SAMPLE_RATE)
        t = np.arange(length) / SAMPLE_RATE
        f = bells[i % 2] * ratios[:, None]
        taus = rng.uniform(1.5, 3.0) / ratios[:, None] ** 0.7
        strike = (amps[:, None] * np.sin(2 * np.pi * f * t) * np.exp(-t / taus)).sum(0)
        _add(out, strike * np.minimum(1, t / 0.003), start * SAMPLE_RATE)
    return _normalize_peak(out)


def _synth_water_drops(rng: np.random.Generator, n: int) -> np.ndarray:
    """Drops: short rising 'plink' sweeps at irregular times, each with a faint echo."""
    out = np.zeros(n)
    for _ in range(rng.integers(4, 20)):
        length = int(rng.uniform(0.03, 0.08) * SAMPLE_RATE)
        u = np.linspace(0, 1, length)
        f0 = rng.uniform(400, 1400)
        f = f0 * rng.uniform(1.5, 3.0) ** np.minimum(1, 3 * u)
        drop = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * _decay(length, rng.uniform(0.01, 0.03), 0.001)
        start = rng.uniform(0, n / SAMPLE_RATE) * SAMPLE_RATE
        gain = rng.uniform(0.3, 1.0)
        _add(out, drop * gain, start)
        _add(out, drop * gain * 0.3, start + rng.uniform(0.02, 0.06) * SAMPLE_RATE)
    return _normalize_peak(out)


def _synth_crickets(rng: np.random.Generator, n: int) -> np.ndarray:
    """Crickets: a high carrier gated into pulse trains (chirps) repeated regularly."""
    t = np.arange(n) / SAMPLE_RATE
    carrier = np.sin(2 * np.pi * rng.uniform(3500, 6500) * t)
    pulse_rate = rng.uniform(15, 45)
    pulses = rng.integers(3, 9)
    chirp_period = rng.uniform(0.3, 1.0)
    in_chirp = np.mod(t + rng.uniform(0, chirp_period), chirp_period)
    gate = (in_chirp < pulses / pulse_rate) * np.clip(np.sin(np.pi * pulse_rate * in_chirp) ** 2, 0, 1)
    return _normalize_peak(carrier * gate * (1 + 0.1 * rng.standard_normal(n)))


@dataclass(frozen=True)
class EventClass:
    """One synthesised sound-event class, named as in ESC-50 and in the AudioSet ontology."""

    category: str  # ESC-50 category
    esc50_target: int  # ESC-50's class index for it
    mid: str  # AudioSet ontology id
    display_name: str  # AudioSet display name
    synth: Callable[[np.random.Generator, int], np.ndarray]
    continuous: bool  # fills the clip (rain, engine...) rather than discrete events

    @property
    def esc10(self) -> bool:
        return self.category in _ESC10


_ESC10 = {"dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing", "clock_tick", "helicopter", "chainsaw"}

# Mids and display names are the real ones of the AudioSet ontology (class_labels_indices.csv).
EVENT_CLASSES: tuple[EventClass, ...] = (
    EventClass("dog", 0, "/m/0bt9lr", "Dog", _synth_dog, False),
    EventClass("rain", 10, "/m/06mb1", "Rain", _synth_rain, True),
    EventClass("crickets", 13, "/m/09xqv", "Cricket", _synth_crickets, True),
    EventClass("chirping_birds", 14, "/m/07pggtn", "Chirp, tweet", _synth_chirping_birds, False),
    EventClass("water_drops", 15, "/m/07r5v4s", "Drip", _synth_water_drops, False),
    EventClass("door_wood_knock", 30, "/m/07r4wb8", "Knock", _synth_door_wood_knock, False),
    EventClass("clock_tick", 38, "/m/07qjznl", "Tick-tock", _synth_clock_tick, True),
    EventClass("siren", 42, "/m/03kmc9", "Siren", _synth_siren, True),
    EventClass("engine", 44, "/m/02mk9", "Engine", _synth_engine, True),
    EventClass("church_bells", 46, "/m/03w41f", "Church bell", _synth_church_bells, False),
)


def _background(rng: np.random.Generator, n: int, level_db: tuple[float, float]) -> np.ndarray:
    """A room / microphone noise floor: coloured noise at a random level (dBFS RMS)."""
    return _colored_noise(rng, n, rng.uniform(0.0, 2.0)) * _db(rng.uniform(*level_db))


# ---------------------------------------------------------------------------------------------
# espeak-ng
# ---------------------------------------------------------------------------------------------


def require_espeak() -> str:
    """Path of ``espeak-ng``, or :class:`MissingToolError` saying how to install it."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise MissingToolError(
            f"{ESPEAK} is not installed (or not on PATH). The built-in speech_commands and voxceleb1 data sets "
            "are spoken by its voices. Install it with `sudo apt-get install espeak-ng` (Debian, Ubuntu; on Colab "
            "`!apt-get install -y espeak-ng`), `brew install espeak-ng` (macOS) or `conda install -c conda-forge "
            "espeak-ng`, then run again. `--only esc50,audioset` builds the data sets that need no speech."
        )
    return path


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: espeak-ng accent + variant, speaking rate (words/min) and pitch (0-99)."""

    accent: str
    variant: str
    speed: int
    pitch: int

    def speak(self, espeak: str, text: str, speed_jitter: int = 0, pitch_jitter: int = 0) -> np.ndarray:
        """Synthesise ``text``; returns a float64 waveform at :data:`SAMPLE_RATE`."""
        cmd = [
            espeak, "-v", f"{self.accent}+{self.variant}",
            "-s", str(max(80, self.speed + speed_jitter)), "-p", str(int(np.clip(self.pitch + pitch_jitter, 0, 99))),
            "--stdout", text,
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, check=False)
        if result.returncode != 0 or len(result.stdout) < 100:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.decode(errors='replace').strip()}")
        # espeak-ng streams a WAV whose header declares an unknown length; libsndfile copes.
        data, rate = sf.read(io.BytesIO(result.stdout), dtype="float64")
        return signal.resample_poly(data, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else data


def _make_voices(rng: np.random.Generator, count: int) -> list[Voice]:
    """``count`` distinct voices: each accent x variant pair used once, rates and pitches spread."""
    pairs = [(a, v) for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    chosen = rng.choice(len(pairs), size=count, replace=count > len(pairs))
    return [
        Voice(pairs[i][0], pairs[i][1], int(rng.integers(120, 200)), int(rng.integers(15, 85)))
        for i in chosen
    ]


def _trim_silence(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > threshold * max(np.abs(x).max(), 1e-9))
    return x[loud[0] : loud[-1] + 1] if len(loud) else x


def _map(fn: Callable, items: Iterable, workers: int) -> list:
    """Ordered map; threads are enough because the work is in espeak-ng subprocesses and numpy."""
    items = list(items)
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _random_id(rng: np.random.Generator, alphabet: str, length: int) -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), length))


# ---------------------------------------------------------------------------------------------
# The four layouts
# ---------------------------------------------------------------------------------------------


def _scaled(base: int, scale: float, minimum: int) -> int:
    return max(minimum, int(round(base * scale)))


def _build_esc50(root: Path, seed: int, scale: float, workers: int) -> dict:
    per_fold = _scaled(ESC50_CLIPS_PER_CLASS // ESC50_FOLDS, scale, 1)
    n = int(ESC50_SECONDS * SAMPLE_RATE)
    jobs = [(c, fold, k) for c in range(len(EVENT_CLASSES)) for fold in range(1, ESC50_FOLDS + 1) for k in range(per_fold)]
    src_ids = _rng(seed, "esc50-src").choice(np.arange(10_000, 300_000), size=len(jobs), replace=False)

    def make(job_index: int) -> dict:
        c, fold, _ = jobs[job_index]
        event = EVENT_CLASSES[c]
        rng = _rng(seed, "esc50", job_index)
        x = event.synth(rng, n) * _db(rng.uniform(-20, -3))  # loudness varies by 17 dB
        x += _background(rng, n, (-55, -30))
        filename = f"{fold}-{src_ids[job_index]}-A-{event.esc50_target}.wav"
        _write_wav(root / "audio" / filename, x)
        return {
            "filename": filename, "fold": fold, "target": event.esc50_target, "category": event.category,
            "esc10": str(event.esc10), "src_file": int(src_ids[job_index]), "take": "A",
        }  # fmt: skip

    rows = sorted(_map(make, range(len(jobs)), workers), key=lambda r: r["filename"])
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writeheader()
        writer.writerows(rows)
    return {"clips": len(rows), "classes": len(EVENT_CLASSES), "folds": ESC50_FOLDS, "seconds_per_clip": ESC50_SECONDS}


def _noise_files(rng: np.random.Generator, n: int, espeak: str, voices: list[Voice]) -> dict[str, np.ndarray]:
    """Background noises for augmentation, as in Speech Commands' ``_background_noise_``."""
    t = np.arange(n) / SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 8))
    tap = _filter(_colored_noise(rng, n, 0.5), "bandpass", (800, 5000)) * (1 + 0.3 * np.sin(2 * np.pi * 3.1 * t))
    babble = np.zeros(n)  # several voices talking over each other, looped
    for voice in voices[:6]:
        speech = voice.speak(espeak, VOX_SENTENCES[int(rng.integers(len(VOX_SENTENCES)))])
        speech = np.tile(speech, n // len(speech) + 1)
        babble += np.roll(speech[:n], int(rng.integers(0, n))) * rng.uniform(0.5, 1.0)
    noises = {
        "white_noise": _colored_noise(rng, n, 0.0),
        "pink_noise": _colored_noise(rng, n, 1.0),
        "brown_noise": _colored_noise(rng, n, 2.0),
        "mains_hum": hum + 0.05 * _colored_noise(rng, n, 1.0),
        "running_tap": tap,
        "babble": babble,
    }
    return {name: _normalize_peak(x, 0.5) for name, x in noises.items()}


def _build_speech_commands(root: Path, seed: int, scale: float, workers: int) -> dict:
    espeak = require_espeak()
    n_train_speakers, n_val_speakers, n_test_speakers = (_scaled(n, scale, 1) for n in SPEECH_SPEAKERS)
    n_speakers = n_train_speakers + n_val_speakers + n_test_speakers
    rng = _rng(seed, "speech_commands-speakers")
    voices = _make_voices(rng, n_speakers)
    speakers = []
    while len(speakers) < n_speakers:  # 8 hex digits, like the real ids
        sid = _random_id(rng, "0123456789abcdef", 8)
        if sid not in speakers:
            speakers.append(sid)
    order = rng.permutation(n_speakers).tolist()
    validation = set(order[:n_val_speakers])
    testing = set(order[n_val_speakers : n_val_speakers + n_test_speakers])
    n = int(SPEECH_SECONDS * SAMPLE_RATE)
    room = [(rng.uniform(-65, -40), rng.uniform(0, 2)) for _ in range(n_speakers)]  # per speaker
    jobs = [(s, w) for s in range(n_speakers) for w in range(len(SPEECH_COMMANDS_WORDS))]

    def make(job_index: int) -> str:
        s, w = jobs[job_index]
        clip_rng = _rng(seed, "speech_commands", s, w)
        speech = voices[s].speak(espeak, SPEECH_COMMANDS_WORDS[w], int(clip_rng.integers(-15, 16)), int(clip_rng.integers(-6, 7)))
        speech = _trim_silence(speech)[:n]
        speech = _normalize_peak(speech, _db(clip_rng.uniform(-18, -2)))
        x = np.zeros(n)
        _add(x, speech * _fade(len(speech), 0.005), clip_rng.integers(0, n - len(speech) + 1))
        level, colour = room[s]
        x += _colored_noise(clip_rng, n, colour) * _db(level + clip_rng.uniform(-3, 3))
        rel = f"{SPEECH_COMMANDS_WORDS[w]}/{speakers[s]}_nohash_0.wav"
        _write_wav(root / rel, x)
        return rel

    paths = _map(make, range(len(jobs)), workers)
    val_list = sorted(p for p, (s, _) in zip(paths, jobs) if s in validation)
    test_list = sorted(p for p, (s, _) in zip(paths, jobs) if s in testing)
    (root / "validation_list.txt").write_text("".join(p + "\n" for p in val_list))
    (root / "testing_list.txt").write_text("".join(p + "\n" for p in test_list))

    noise_dir = root / "_background_noise_"
    noise_n = int(max(3.0, NOISE_SECONDS * min(scale, 1.0)) * SAMPLE_RATE)
    for name, x in _noise_files(_rng(seed, "speech_commands-noise"), noise_n, espeak, voices).items():
        _write_wav(noise_dir / f"{name}.wav", x)
    (noise_dir / "README.md").write_text(
        "Synthetic background noises (asit built-in data), for mixing into training clips, "
        "like the real data set's _background_noise_ folder.\n"
    )
    return {
        "clips": len(paths), "words": len(SPEECH_COMMANDS_WORDS), "speakers": n_speakers,
        "validation_speakers": len(validation), "testing_speakers": len(testing), "noise_files": 6,
    }  # fmt: skip


def _build_voxceleb1(root: Path, seed: int, scale: float, workers: int) -> dict:
    espeak = require_espeak()
    n_speakers = _scaled(VOX_SPEAKERS, scale, 3)
    n_train, n_val, n_test = (_scaled(n, scale, 1) for n in VOX_UTTERANCES)
    rng = _rng(seed, "voxceleb1-speakers")
    voices = _make_voices(rng, n_speakers)
    # Each video is a session with its own channel, and no video feeds two splits (the identification
    # protocol holds out whole videos): training utterances go round-robin over VOX_TRAIN_VIDEOS videos
    # (slots 0..n-1), validation and test each get one more video of their own (slots n and n + 1).
    n_videos = min(VOX_TRAIN_VIDEOS, n_train)
    splits = [1] * n_train + [2] * n_val + [3] * n_test
    jobs = []  # (speaker, utterance, split, video slot)
    for s in range(n_speakers):
        for u, split in enumerate(splits):
            video_slot = u % n_videos if split == 1 else n_videos + split - 2
            jobs.append((s, u, split, video_slot))
    video_ids = {
        (s, v): _random_id(rng, string.ascii_letters + string.digits + "-_", 11) for s in range(n_speakers) for v in range(n_videos + 2)
    }
    channels = {key: (rng.uniform(-60, -35), rng.uniform(0, 2), rng.uniform(3500, 7800), rng.uniform(-12, -3)) for key in video_ids}

    def make(job_index: int) -> tuple[int, int, int]:
        s, u, _, v = jobs[job_index]
        clip_rng = _rng(seed, "voxceleb1", s, u)
        text = " ".join(VOX_SENTENCES[i] for i in clip_rng.choice(len(VOX_SENTENCES), 2, replace=False))
        words = text.split()[: int(clip_rng.integers(6, 16))]  # 2-6 s at the voices' rates
        speech = _trim_silence(voices[s].speak(espeak, " ".join(words), int(clip_rng.integers(-10, 11))))
        noise_db, colour, bandwidth, gain_db = channels[(s, v)]
        speech = _normalize_peak(_filter(speech, "lowpass", bandwidth, order=4), _db(gain_db))
        length = int(np.clip(len(speech) + 0.3 * SAMPLE_RATE, VOX_MIN_SECONDS * SAMPLE_RATE, VOX_MAX_SECONDS * SAMPLE_RATE))
        x = np.zeros(length)
        _add(x, speech[: length - int(0.15 * SAMPLE_RATE)], int(0.15 * SAMPLE_RATE))
        x += _colored_noise(clip_rng, length, colour) * _db(noise_db)
        return job_index, s, v, x

    results = _map(make, range(len(jobs)), workers)
    lines, counters = [], {}
    for job_index, s, v, x in results:  # number utterances per video, in job order
        counters[(s, v)] = counters.get((s, v), 0) + 1
        rel = f"id{10001 + s}/{video_ids[(s, v)]}/{counters[(s, v)]:05d}.wav"
        _write_wav(root / "wav" / rel, x)
        lines.append(f"{jobs[job_index][2]} {rel}\n")
    (root / "iden_split.txt").write_text("".join(lines))
    return {"utterances": len(lines), "speakers": n_speakers, "train_val_test_per_speaker": [n_train, n_val, n_test]}


def _build_audioset(root: Path, seed: int, scale: float, workers: int) -> dict:
    k = len(EVENT_CLASSES)
    n_train, n_eval = _scaled(AUDIOSET_TRAIN, scale, k), _scaled(AUDIOSET_EVAL, scale, k)
    n = int(AUDIOSET_SECONDS * SAMPLE_RATE)
    ids = []
    id_rng = _rng(seed, "audioset-ids")
    while len(ids) < n_train + n_eval:  # YouTube-like ids (not real videos)
        vid = _random_id(id_rng, string.ascii_letters + string.digits + "-_", 11)
        if vid not in ids:
            ids.append(vid)

    def make(i: int) -> dict:
        rng = _rng(seed, "audioset", i)
        # The first label cycles through the classes so that every class occurs in both splits.
        first = i % k if i < n_train else (i - n_train) % k
        others = [c for c in rng.permutation(k).tolist() if c != first][: rng.choice([0, 1, 2], p=[0.4, 0.4, 0.2])]
        labels = sorted([first, *others])
        x = np.zeros(n)
        for c in labels:
            event = EVENT_CLASSES[c].synth(rng, n) * _db(rng.uniform(-10, 0))
            if EVENT_CLASSES[c].continuous and rng.random() < 0.5:  # weak labels: present somewhere
                length = int(rng.uniform(1.0, AUDIOSET_SECONDS) * SAMPLE_RATE)
                start = int(rng.integers(0, n - length + 1))
                gate = np.zeros(n)
                gate[start : start + length] = _fade(length, 0.1)
                event = event * gate
            x += event
        x = _normalize_peak(x, _db(rng.uniform(-15, -3))) + _background(rng, n, (-55, -35))
        rel = f"audio/{ids[i]}.wav"
        _write_wav(root / rel, x)
        return {"wav": rel, "labels": ",".join(EVENT_CLASSES[c].mid for c in labels)}

    items = _map(make, range(n_train + n_eval), workers)
    (root / "balanced_train.json").write_text(json.dumps({"data": items[:n_train]}, indent=1) + "\n")
    (root / "eval.json").write_text(json.dumps({"data": items[n_train:]}, indent=1) + "\n")
    with open(root / "class_labels_indices.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([i, e.mid, e.display_name] for i, e in enumerate(EVENT_CLASSES))
    return {"train_clips": n_train, "eval_clips": n_eval, "classes": k, "seconds_per_clip": AUDIOSET_SECONDS}


def _build_unlabelled(root: Path, seed: int, scale: float, workers: int) -> dict:
    espeak = require_espeak()
    n_events, n_speech = _scaled(UNLABELLED_EVENT_CLIPS, scale, 2), _scaled(UNLABELLED_SPEECH_CLIPS, scale, 2)
    voices = _make_voices(_rng(seed, "unlabelled-voices"), _scaled(UNLABELLED_VOICES, scale, 2))
    vocabulary = SPEECH_COMMANDS_WORDS + OTHER_WORDS
    n_event, n_word = int(AUDIOSET_SECONDS * SAMPLE_RATE), int(SPEECH_SECONDS * SAMPLE_RATE)

    def make_event(i: int) -> None:
        rng = _rng(seed, "unlabelled-events", i)
        classes = rng.permutation(len(EVENT_CLASSES))[: rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])]
        x = sum(EVENT_CLASSES[c].synth(rng, n_event) * _db(rng.uniform(-10, 0)) for c in classes)
        _write_wav(root / "events" / f"{i:05d}.wav", _normalize_peak(x, _db(rng.uniform(-20, -3))) + _background(rng, n_event, (-55, -30)))

    def make_word(i: int) -> None:
        rng = _rng(seed, "unlabelled-speech", i)
        voice = voices[int(rng.integers(len(voices)))]
        word = vocabulary[int(rng.integers(len(vocabulary)))]
        speech = _trim_silence(voice.speak(espeak, word, int(rng.integers(-15, 16)), int(rng.integers(-6, 7))))[:n_word]
        x = np.zeros(n_word)
        _add(x, _normalize_peak(speech, _db(rng.uniform(-18, -2))) * _fade(len(speech), 0.005), rng.integers(0, n_word - len(speech) + 1))
        x += _colored_noise(rng, n_word, rng.uniform(0, 2)) * _db(rng.uniform(-65, -40))
        _write_wav(root / "speech" / f"{i:05d}.wav", x)

    _map(make_event, range(n_events), workers)
    _map(make_word, range(n_speech), workers)
    return {"event_clips": n_events, "speech_clips": n_speech, "voices": len(voices), "words": len(vocabulary)}


_BUILDERS = {
    "esc50": _build_esc50,
    "speech_commands": _build_speech_commands,
    "voxceleb1": _build_voxceleb1,
    "audioset": _build_audioset,
    "unlabelled": _build_unlabelled,
}
_NEEDS_ESPEAK = {"speech_commands", "voxceleb1", "unlabelled"}


def _folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _parse_only(only: str | Iterable[str] | None) -> list[str]:
    if only is None:
        return list(LAYOUTS)
    names = [s.strip() for s in (only.split(",") if isinstance(only, str) else only) if s.strip()]
    unknown = [s for s in names if s not in LAYOUTS]
    if unknown or not names:
        raise ValueError(f"unknown built-in data set(s) {unknown or names}; choose from {', '.join(LAYOUTS)}")
    return [s for s in LAYOUTS if s in names]


def is_complete(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a finished build of every data set in :data:`LAYOUTS`."""
    return (Path(out_dir) / COMPLETE_MARKER).is_file()


def build_builtin(
    out_dir: str | Path,
    seed: int = 0,
    scale: float = 1.0,
    only: str | Iterable[str] | None = None,
    workers: int | None = None,
    verbose: bool = False,
) -> dict:
    """Generate the built-in data sets under ``out_dir`` (one sub-folder per layout).

    Args:
        out_dir: e.g. ``data/builtin``; existing sub-folders of the data sets built are replaced.
        seed: the same seed and scale give the same bytes.
        scale: multiplies the number of clips and speakers (1.0: about 100 MB; 0.1 for tests).
        only: a subset of :data:`LAYOUTS` (list or comma-separated string); ``None``: all four.
        workers: threads for espeak-ng calls and synthesis (default: up to 4, by CPU count).
        verbose: print each data set as it is written.

    Returns:
        A summary: ``{"out_dir", "seed", "scale", "seconds", "bytes", "layouts": {name: {...}}}``.

    Raises:
        MissingToolError: espeak-ng is missing and a speech data set was asked for (checked first).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    names = _parse_only(only)
    if any(name in _NEEDS_ESPEAK for name in names):
        require_espeak()  # fail before writing anything
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPLETE_MARKER).unlink(missing_ok=True)  # nothing looks finished until we say so
    began = time.perf_counter()
    summary: dict = {"out_dir": str(out), "seed": seed, "scale": scale, "layouts": {}}
    for name in names:
        started = time.perf_counter()
        tmp, final, old = out / f".building-{name}", out / name, out / f".old-{name}"
        for leftover in (tmp, old):  # from an interrupted run
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
        info = _BUILDERS[name](tmp, seed, scale, workers)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        files, size = _folder_size(final)
        info.update(path=str(final), files=files, bytes=size, seconds=round(time.perf_counter() - started, 2))
        summary["layouts"][name] = info
        if verbose:
            print(f"  {name:16s} {files:5d} files  {size / 1e6:6.1f} MB  {info['seconds']:5.1f} s  -> {final}", flush=True)
    summary["seconds"] = round(time.perf_counter() - began, 2)
    summary["bytes"] = sum(info["bytes"] for info in summary["layouts"].values())
    if all((out / name).is_dir() for name in LAYOUTS):
        (out / COMPLETE_MARKER).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asit.datasets.builtin",
        description="Generate the small offline built-in data sets (ESC-50, Speech Commands, VoxCeleb1 and "
        "AudioSet layouts) from a seed. Needs espeak-ng for the two speech data sets.",
    )
    parser.add_argument("--out", default="data/builtin", help="output folder (default: data/builtin)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same bytes")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies clip and speaker counts (1.0: about 100 MB)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(LAYOUTS)}")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: up to 4)")
    args = parser.parse_args(argv)
    print(f"building the built-in data sets in {args.out} (seed {args.seed}, scale {args.scale})", flush=True)
    try:
        summary = build_builtin(args.out, seed=args.seed, scale=args.scale, only=args.only, workers=args.workers, verbose=True)
    except (MissingToolError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    done = "complete" if is_complete(args.out) else "partial: not all four data sets present, no .complete written"
    print(f"wrote {summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s ({done})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
