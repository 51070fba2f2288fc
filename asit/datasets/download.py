"""Download and unpack the data sets that are publicly downloadable: ESC-50, Speech Commands V1/V2.

    python -m asit.datasets.download esc50 --root data
    python -m asit.datasets.download speech_commands_v2 --root data

Each download is resumable (an interrupted ``.part`` file continues with an HTTP Range request),
checked against a known sha256 (an error on mismatch), unpacked safely (a member that would land
outside the target folder is refused) into a temporary folder that is renamed only when complete,
and idempotent: a finished download is detected and skipped. VoxCeleb1 needs registration and
AudioSet must be scraped: see ``data/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm


@dataclass(frozen=True)
class Download:
    url: str
    sha256: str | None  # None: unknown (the file changes), the computed hash is printed instead
    folder: str  # unpacked into <root>/<folder>, the data_root to give get_dataset
    marker: str  # a file the unpacked layout must hold
    size: str  # for the help text


DOWNLOADS = {
    # The GitHub branch archive changes whenever the repository does, so it has no fixed checksum.
    "esc50": Download("https://github.com/karolpiczak/ESC-50/archive/master.zip", None, "esc50", "meta/esc50.csv", "600 MB"),
    # Checksums as torchaudio's SPEECHCOMMANDS data set records them.
    "speech_commands_v1": Download(
        "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
        "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
        "speech_commands_v0.01", "testing_list.txt", "1.4 GB",
    ),
    "speech_commands_v2": Download(
        "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
        "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
        "speech_commands_v0.02", "testing_list.txt", "2.3 GB",
    ),
}

STAMP = ".asit_download.json"  # written last: its presence means download + unpack completed
KNOWN = "known"  # sha256 argument: use the table's checksum


class ChecksumError(ValueError):
    """A downloaded file's sha256 is not the expected one."""


class CorruptArchiveError(ValueError):
    """A downloaded archive that cannot be unpacked (cut short, not an archive); it is removed."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder (path traversal, links)."""


def sha256sum(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: str | Path, sha256: str | None = None, *, progress: bool = True,
                  timeout: float = 60.0, chunk_size: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest``, resuming ``<dest>.part`` if an earlier attempt was cut off.

    A ``dest`` already there (and matching ``sha256``) is kept as is. With ``sha256=None`` the
    computed hash is printed, so it can be recorded. Raises :class:`ChecksumError` on mismatch
    (the bad file is removed, so the next attempt starts afresh).
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256sum(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "asit-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: nothing left to send, the .part file is whole
            raise
        response = None
    if response is not None:
        with response:
            if offset and response.status != 206:  # the server ignored Range: start again
                offset = 0
            remaining = response.headers.get("Content-Length")
            total = offset + int(remaining) if remaining is not None else None
            with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress,
            ) as bar:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
    actual = sha256sum(part)
    if sha256 is None:
        print(f"sha256 of {dest.name}: {actual} (no known checksum to compare with)")
    elif actual != sha256:
        part.unlink()
        raise ChecksumError(
            f"{url}: the download's sha256 is {actual}, expected {sha256}. The file was removed; run again "
            "to download it afresh, or pass sha256=None (--sha256 none) if the publisher changed it."
        )
    part.replace(dest)
    return dest


def _check_member(name: str, dest: Path, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    target = (dest / path).resolve()
    if path.is_absolute() or ".." in path.parts or not target.is_relative_to(dest.resolve()):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside {dest}; nothing was extracted")


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a ``.zip`` / ``.tar.gz`` into ``dest`` safely; returns ``dest``.

    Every member is checked before anything is written: absolute paths, ``..`` and links or
    devices are refused (:class:`UnsafeArchiveError`). The archive is unpacked into a temporary
    sibling folder, renamed to ``dest`` when complete; a single top folder (``ESC-50-master/``)
    is dropped so that ``dest`` itself is the data set's root.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists already; extract_archive does not write over a folder")
    tmp = dest.with_name(dest.name + ".extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(info.filename, tmp, archive)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink stored by Unix zip
                        raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link; nothing was extracted")
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    _check_member(member.name, tmp, archive)
                    if not (member.isfile() or member.isdir()):
                        raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link or device; nothing was extracted")
                # The "data" filter (Python >= 3.11.4 / 3.10.12) refuses the same things once more.
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tf.extractall(tmp, members=members, **safe)
        entries = [p for p in tmp.iterdir() if not p.name.startswith("__MACOSX")]
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        top.replace(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def download_dataset(name: str, root: str | Path | None = None, *, url: str | None = None,
                     sha256: str | None = KNOWN, keep_archive: bool = False, progress: bool = True) -> Path:
    """Download and unpack data set ``name`` into ``<root>/<folder>``; returns that folder (the ``data_root``).

    Args:
        name: a key of ``DOWNLOADS`` (esc50, speech_commands_v1, speech_commands_v2).
        root: where to put it (default: ``asit.session.data_dir()``, the repository's ``data/``).
        url: a mirror to use instead of the publisher's address.
        sha256: expected checksum; the default uses the table's, None skips the check.
        keep_archive: keep the downloaded archive next to the folder.
    """
    if name not in DOWNLOADS:
        raise ValueError(f"no download for {name!r}; downloadable: {', '.join(DOWNLOADS)} (see data/README.md for the others)")
    spec = DOWNLOADS[name]
    if root is None:
        from asit.session import data_dir

        root = data_dir()
    root = Path(root).expanduser()
    dest = root / spec.folder
    if (dest / STAMP).is_file():
        print(f"{name} is already downloaded in {dest}")
        return dest
    if dest.exists():
        if (dest / spec.marker).is_file():
            print(f"{name}: found an unpacked copy in {dest}, keeping it")
            return dest
        raise FileExistsError(f"{dest} exists but holds no {spec.marker}: remove it (or choose another --root) and run again")
    url = url or spec.url
    sha256 = spec.sha256 if sha256 == KNOWN else sha256
    archive = download_file(url, root / PurePosixPath(spec.url).name, sha256, progress=progress)
    try:
        extract_archive(archive, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        if isinstance(err, FileExistsError):
            raise
        archive.unlink(missing_ok=True)  # never reused: the next run downloads it afresh
        raise CorruptArchiveError(
            f"{archive} (from {url}) cannot be unpacked ({type(err).__name__}: {err}); it was removed: "
            "run again to download it afresh, or pass --url with a good mirror"
        ) from None
    if not (dest / spec.marker).is_file():
        raise FileNotFoundError(f"{archive} unpacked into {dest} but holds no {spec.marker}: not the expected archive")
    (dest / STAMP).write_text(json.dumps({"name": name, "url": url, "sha256": sha256}))
    if not keep_archive:
        archive.unlink()
    print(f"{name} is ready: get_dataset({name!r}, 'train', data_root={str(dest)!r})")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asit.datasets.download",
        description="Download and unpack a public data set in the layout its loader reads. "
        "VoxCeleb1 (registration) and AudioSet (scraping): see data/README.md.",
    )
    parser.add_argument("name", choices=sorted(DOWNLOADS), help=", ".join(f"{k}: {v.size}" for k, v in DOWNLOADS.items()))
    parser.add_argument("--root", default=None, help="folder to put it in (default: the repository's data/)")
    parser.add_argument("--url", default=None, help="a mirror of the archive")
    parser.add_argument("--sha256", default=KNOWN, help="expected checksum; 'none' skips the check (prints the hash)")
    parser.add_argument("--keep-archive", action="store_true", help="keep the archive after unpacking")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    sha256 = None if args.sha256.lower() == "none" else args.sha256
    try:
        download_dataset(args.name, args.root, url=args.url, sha256=sha256, keep_archive=args.keep_archive, progress=not args.quiet)
    except (ChecksumError, CorruptArchiveError, UnsafeArchiveError, FileExistsError, urllib.error.URLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
