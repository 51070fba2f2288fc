"""Checkpoints that survive a crash: atomic writes, the last N kept, a clear error on mismatch.

Layout of a run directory (see ``asit/README.md``)::

    checkpoint.pth           the latest state (written at every save, also mid-epoch)
    checkpoint-0003.pth      numbered copies at epoch ends, the last ``keep_last`` kept

Every write goes to a temporary file in the same folder, is flushed and ``fsync``-ed, then
renamed over the target with ``os.replace`` (atomic on POSIX and Windows). A crash or a kill at
any moment leaves either the old file or the new one, never half a file; a stray
``.*.tmp-*`` file from a killed writer is ignored by :func:`find_latest` and removed by the next
save. Should ``checkpoint.pth`` be damaged all the same (a copy cut short, a disk error),
:func:`load_latest_checkpoint` falls back to the newest intact numbered one, with a warning.

Each checkpoint carries the run's config (a JSON-ready dict), the package version and the torch
version. Everything inside is made of tensors and plain Python values (the NumPy RNG state is
stored as a tensor), so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``
and nothing needs allow-listing with ``torch.serialization.add_safe_globals``. Should a caller
add other objects (a NumPy array, a dataclass), either convert them to tensors / dicts first or
allow-list their classes; the loader falls back to ``weights_only=False`` only when asked
(``trusted=True``), for files you wrote yourself.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch

import asit
from asit.atomic import atomic_write, fsync_dir, remove_stale_temporaries

LATEST = "checkpoint.pth"
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pth$")


class CheckpointMismatch(ValueError):
    """A checkpoint written under a config that the current run cannot continue.

    ``fields`` maps each mismatched field to ``(in_checkpoint, now)``.
    """

    def __init__(self, path: str | Path, fields: dict[str, tuple[Any, Any]]):
        self.path = str(path)
        self.fields = fields
        lines = "\n".join(f"  {name}: checkpoint has {old!r}, this run has {new!r}" for name, (old, new) in fields.items())
        super().__init__(
            f"{path} was written by an incompatible run; these settings differ:\n{lines}\n"
            "Use the checkpoint's settings, start a new run (another run name or output_dir), "
            "or pass resume='never' to start over."
        )


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (see :mod:`asit.atomic`)."""
    with atomic_write(path) as handle:
        torch.save(obj, handle)
    return Path(path)


def _atomic_copy(source: Path, target: Path) -> None:
    with atomic_write(target) as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)


def _config_dict(config: Any) -> dict:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        if hasattr(config, "to_dict"):
            return config.to_dict()
        return dataclasses.asdict(config)
    return dict(config)


def numbered_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(epoch, path), ...]`` of the numbered checkpoints in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = _NUMBERED.match(child.name)
        if match:
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_checkpoint(
    state: dict,
    run_dir: str | Path,
    config: Any = None,
    epoch: int | None = None,
    keep_last: int = 2,
) -> Path:
    """Write ``state`` as ``run_dir/checkpoint.pth``; with ``epoch``, also ``checkpoint-<epoch>.pth``.

    The config (dataclass or dict), ``asit.__version__``, ``torch.__version__`` and the time are
    added under ``"config"``, ``"asit_version"``, ``"torch_version"``, ``"saved_at"``. Only the
    newest ``keep_last`` numbered checkpoints are kept (``keep_last <= 0`` keeps all of them).

    Returns:
        the path of ``checkpoint.pth``.
    """
    run_dir = Path(run_dir)
    # A writer killed mid-save left its temporary behind (of a numbered file too): gone now.
    remove_stale_temporaries(run_dir, lambda name: name == LATEST or _NUMBERED.match(name) is not None)
    payload = dict(state)
    payload["config"] = _config_dict(config)
    payload["asit_version"] = asit.__version__
    payload["torch_version"] = str(torch.__version__)  # a TorchVersion object would need allow-listing
    payload["saved_at"] = time.time()
    latest = atomic_save(payload, run_dir / LATEST)
    if epoch is not None:
        _atomic_copy(latest, run_dir / f"checkpoint-{epoch:04d}.pth")
        fsync_dir(run_dir)
        if keep_last > 0:
            for _, old in numbered_checkpoints(run_dir)[:-keep_last]:
                old.unlink(missing_ok=True)
    return latest


def find_latest(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``checkpoint.pth`` if present, else the newest numbered one."""
    run_dir = Path(run_dir)
    if (run_dir / LATEST).is_file():
        return run_dir / LATEST
    numbered = numbered_checkpoints(run_dir)
    return numbered[-1][1] if numbered else None


def config_mismatches(saved: dict, expected: dict, may_change: Iterable[str] = (),
                      defaults: dict | None = None) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two config dicts, except those in ``may_change``.

    Nested dicts (e.g. the masking config) are compared field by field as ``outer.inner``.
    ``defaults``: the config class's own values; a field the saved dict lacks (one added to the
    class after the checkpoint was written) reads as its default, which is what that run did.
    """
    may_change = set(may_change)
    differ: dict[str, tuple[Any, Any]] = {}

    def walk(a: dict, b: dict, fallback: dict, prefix: str) -> None:
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}{key}"
            if name in may_change:
                continue
            old, new = a.get(key, fallback.get(key, "<missing>")), b.get(key, "<missing>")
            if isinstance(old, dict) and isinstance(new, dict):
                inner = fallback.get(key)
                walk(old, new, inner if isinstance(inner, dict) else {}, name + ".")
            elif _normalise(old) != _normalise(new):
                differ[name] = (old, new)

    walk(saved, expected, defaults or {}, "")
    return differ


def _defaults_of(config: Any) -> dict | None:
    """The default values of a dataclass config's class (None for a dict, or a class without defaults)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return None
    try:
        return _config_dict(type(config)())
    except TypeError:  # a field without a default
        return None


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class UnreadableCheckpoint(RuntimeError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint); names an intact
    numbered checkpoint beside it when there is one."""

    def __init__(self, path: str | Path, error: BaseException | str):
        self.path, self.error = Path(path), error
        others = [p for _, p in numbered_checkpoints(self.path.parent) if p != self.path]
        hint = (f"; {others[-1].name} beside it may be intact: load it, or resume, which falls back to it"
                if others else "")
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        super().__init__(f"cannot read checkpoint {self.path}: {first_line}{hint}")

    def __reduce__(self):
        return (type(self), (self.path, str(self.error)))


def load_checkpoint(
    path: str | Path,
    expected_config: Any = None,
    may_change: Iterable[str] = (),
    map_location: str | torch.device = "cpu",
    trusted: bool = False,
) -> dict:
    """Read a checkpoint; with ``expected_config``, refuse one from an incompatible run.

    Args:
        expected_config: the current run's config (dataclass or dict). Every field must equal the
            checkpoint's except those named in ``may_change`` (for :class:`asit.config.PretrainConfig`
            see ``asit.config.MAY_CHANGE_ON_RESUME``); otherwise :class:`CheckpointMismatch` names
            each differing field.
        trusted: fall back to ``weights_only=False`` if the safe loader refuses the file. Only for
            files you wrote yourself: unpickling runs arbitrary code.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised below with the file's name
        if not trusted or isinstance(err, (FileNotFoundError, EOFError)):
            raise UnreadableCheckpoint(path, err) from err
        state = torch.load(path, map_location=map_location, weights_only=False)
    if expected_config is not None:
        differ = config_mismatches(state.get("config", {}), _config_dict(expected_config), may_change,
                                   _defaults_of(expected_config))
        if differ:
            raise CheckpointMismatch(path, differ)
    return state


def load_latest_checkpoint(run_dir: str | Path, expected_config: Any = None, may_change: Iterable[str] = (),
                           map_location: str | torch.device = "cpu", trusted: bool = False) -> tuple[Path, dict] | None:
    """The newest checkpoint of ``run_dir`` that can be read, as ``(path, state)``; None if there is none.

    Tries ``checkpoint.pth``, then the numbered checkpoints newest first. A damaged file is passed
    over with a warning naming it and the one used instead; when none can be read, an
    :class:`UnreadableCheckpoint` names every one tried. A readable checkpoint from another config
    raises :class:`CheckpointMismatch` as :func:`load_checkpoint` does (no fallback hides it).
    """
    run_dir = Path(run_dir)
    candidates = ([run_dir / LATEST] if (run_dir / LATEST).is_file() else []) + [p for _, p in reversed(numbered_checkpoints(run_dir))]
    failures = []
    for path in candidates:
        try:
            state = load_checkpoint(path, expected_config, may_change, map_location, trusted)
        except UnreadableCheckpoint as err:
            failures.append(err)
            continue
        if failures:
            warnings.warn(f"{'; '.join(str(f) for f in failures)}. Resuming from {path} (epoch {state.get('epoch', '?')}) instead",
                          stacklevel=2)
        return path, state
    if failures:
        raise UnreadableCheckpoint(run_dir, "no checkpoint in it can be read: " + "; ".join(str(f) for f in failures))
    return None


__all__ = [
    "LATEST",
    "CheckpointMismatch",
    "UnreadableCheckpoint",
    "load_latest_checkpoint",
    "atomic_save",
    "save_checkpoint",
    "load_checkpoint",
    "find_latest",
    "numbered_checkpoints",
    "config_mismatches",
]
