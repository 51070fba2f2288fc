"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one,
never half of one.

The data go to a temporary file in the same folder (``.<name>.tmp-<pid>-<random>``), are flushed
to disk, and the temporary file is renamed over the target (``os.replace`` is atomic on POSIX and
Windows); the folder is synced so the rename itself survives a crash. A temporary left by a
killed writer is removed by the next write of the same file (:func:`remove_stale_temporaries`).
A full disk is reported as :class:`DiskFullError` ("no space left in DIR"), not as whatever the
writer's library makes of it (torch's is a C++ assertion).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

# Less free space than this after a failed write: the disk being full is the likely cause.
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(OSError):
    """No space left on the device of ``directory``; the old file (if any) is intact."""

    def __init__(self, directory: str | Path, name: str):
        super().__init__(errno.ENOSPC, f"no space left in {directory} (writing {name}); the previous "
                         f"{name}, if any, is intact: free some space or write elsewhere")
        self.directory, self.target_name = str(directory), name

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return (type(self), (self.directory, self.target_name))


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process (or cannot tell): leave its file alone
    return True


def remove_stale_temporaries(directory: str | Path, is_target: Callable[[str], bool]) -> list[Path]:
    """Remove the temporaries in ``directory`` of files named as ``is_target`` accepts, left by
    writers that are no longer running; returns them.

    A temporary ``.<target>.tmp-<pid>-<random>`` names its writer's process id; one without (an
    older layout) counts as stale.
    """
    directory, removed = Path(directory), []
    if not directory.is_dir():
        return removed
    for candidate in directory.iterdir():
        name = candidate.name
        if not name.startswith(".") or ".tmp-" not in name or not is_target(name[1:name.rindex(".tmp-")]):
            continue
        pid = name[name.rindex(".tmp-") + len(".tmp-"):].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue
        candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def _disk_full(err: BaseException, directory: Path) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    if not isinstance(err, (OSError, RuntimeError)):  # torch reports a failed write as RuntimeError
        return False
    try:
        return shutil.disk_usage(directory).free < NEARLY_FULL_BYTES
    except OSError:
        return False


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_write(path) as handle: ...`` writes ``path`` all at once or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, lambda name: name == path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(err, path.parent):
            raise DiskFullError(path.parent, path.name) from err
        raise
    fsync_dir(path.parent)
