"""Safe file I/O: atomic writes, checkpoint format, errors that name the file.

Every output of the project goes through :func:`atomic_path` (write to a temp
file in the same directory, fsync, then ``os.replace``), so a killed process or
a full disk never leaves a half-written file under the final name.
Checkpoints are loaded with ``torch.load(..., weights_only=True)`` only.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

CHECKPOINT_FORMAT = "closerlook/1"


class CloserlookError(Exception):
    """Base class: the message always says what is wrong and where."""


class ConfigError(CloserlookError, ValueError):
    """A configuration value is wrong; the message names the key."""


def check_keys(mapping, allowed, key: str, what: str = "") -> None:
    """Raise ConfigError naming ``key.<first unknown key>`` if ``mapping`` has keys outside ``allowed``."""
    extra = set(mapping) - set(allowed)
    if extra:
        raise ConfigError(f"{key}.{sorted(extra)[0]}: unknown key{what} (allowed: {', '.join(sorted(allowed))})")


class CheckpointError(CloserlookError):
    """A checkpoint or activation file is missing, truncated or not ours."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``suffix`` keeps a file extension on the temp file (for writers that look
    at it, e.g. ``np.save`` or ``savefig``); defaults to the target's suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # a file object, not the temp path: torch names the zip records after a path's
        # (random) temp name, which made equal checkpoints differ byte for byte
        torch.save(obj, fh)


def save_checkpoint(path: str | os.PathLike, model_state: dict | None, meta: dict) -> None:
    """Write a model checkpoint: ``{"format", "model": state_dict | None, "meta": {...}}``.

    ``model_state`` is None only for a run that diverged before this point
    (``meta["status"] == "diverged"``); downstream steps mark such results
    inconclusive instead of computing on NaN weights.
    """
    state = None
    if model_state is not None:
        state = {k: v.detach().cpu().clone() for k, v in model_state.items()}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": state, "meta": dict(meta)}, path)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and an error that names the file."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (truncated write?); delete it and rerun the step that makes it")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"(weights_only=True); only load files from sources you trust. Detail: {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot be read (truncated or corrupt: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "delete it and rerun the step that makes it (snakemake reruns it automatically)"
        ) from exc


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (or a plain state dict).

    A bare state dict (e.g. a user's own ``torch.save(model.state_dict())``)
    is accepted and wrapped as ``{"model": sd, "meta": {}}``.
    """
    obj = safe_torch_load(path, map_location=map_location)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return {"format": CHECKPOINT_FORMAT, "model": obj, "meta": {}}
    raise CheckpointError(f"{path}: not a closerlook checkpoint nor a state dict of tensors")


def fingerprint(settings: Any) -> str:
    """16 hex digits of sha256 over the settings as sorted JSON (non-JSON values by ``str``)."""
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
