"""Any folder of audio files, unlabelled: for pretraining on your own recordings.

Every ``.wav``, ``.flac`` and ``.ogg`` file under ``data_root``, recursively (hidden folders
skipped), sorted by path; targets are -1. Statistics are computed over all of it. An entry with an
audio name that is no file (a folder named ``x.wav``, a broken symbolic link) is skipped, named
and counted like a bad file.
"""

from __future__ import annotations

from pathlib import Path

from asit.audio import AUDIO_EXTENSIONS
from asit.datasets.base import AudioDataset, DatasetLayoutError, SkipLog, describe_folder, ensure_split


def find_audio_files(root: Path, skipped: SkipLog | None = None) -> list[Path]:
    """Audio files under ``root`` (any depth), sorted; hidden files and folders are left out.

    Entries with an audio name that are not files go to ``skipped`` (when given), with the reason.
    """
    named = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    files = []
    for path in named:
        if path.is_file():
            files.append(path)
        elif skipped is not None:
            problem = ("is a directory, not an audio file" if path.is_dir()
                       else "is a broken symbolic link" if path.is_symlink() else "is not a regular file")
            skipped.add(path, problem)
    return files


class AudioFolder(AudioDataset):
    """Unlabelled audio under ``data_root``; ``split`` is "all" ("train" is accepted as the same)."""

    def __init__(self, split: str = "all", data_root: str | Path | None = None, **options):
        ensure_split("folder", split, ("all", "train"))
        if data_root is None:
            raise ValueError("the 'folder' data set reads your own audio: pass data_root=<folder of audio files>")
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise DatasetLayoutError("folder", f"a folder of audio files at {root}", describe_folder(root),
                                     "pass the folder that holds your .wav / .flac / .ogg files")
        skipped = options.pop("skipped", None) or SkipLog()
        paths = find_audio_files(root, skipped)
        if not paths:
            found = describe_folder(root) + (f" ({skipped.summary()})" if len(skipped) else "")
            raise DatasetLayoutError("folder", f"audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}",
                                     found, "pass the folder that holds your audio files")
        super().__init__(paths, [-1] * len(paths), [], name="folder", split=split, root=root, skipped=skipped, **options)
