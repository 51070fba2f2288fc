"""Any folder of audio files, unlabelled: for pretraining on your own recordings.

Every ``.wav``, ``.flac`` and ``.ogg`` file under ``data_root``, recursively (hidden folders
skipped), sorted by path; targets are -1. Statistics are computed over all of it.
"""

from __future__ import annotations

from pathlib import Path

from asit.audio import AUDIO_EXTENSIONS
from asit.datasets.base import AudioDataset, DatasetLayoutError, describe_folder, ensure_split


def find_audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (any depth), sorted; hidden files and folders are left out."""
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


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
        paths = find_audio_files(root)
        if not paths:
            raise DatasetLayoutError("folder", f"audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}",
                                     describe_folder(root), "pass the folder that holds your audio files")
        super().__init__(paths, [-1] * len(paths), [], name="folder", split=split, root=root, **options)
