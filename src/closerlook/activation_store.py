"""The activation store: one ``.npy`` per layer (float32 or float16, written to a temp file and renamed)
plus ``meta.json`` (written last: a store without it is incomplete). :func:`load_store` memory-maps the
arrays and raises :class:`~closerlook.io.CheckpointError` naming the file when one is missing, truncated
or of the wrong shape or dtype.

Torch-free (numpy only), so the jobs that only read stores (the similarity tables) start without
importing torch; capture (:mod:`closerlook.activations`) writes through the same helpers.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .io import CheckpointError, atomic_path, atomic_write_json

STORE_FORMAT = "closerlook-activations/1"
# Storage dtypes: float16 halves the disk of a store; readers compute in float64 either way.
STORE_DTYPES = {"float32": np.float32, "float16": np.float16}
_F16_MAX = float(np.finfo(np.float16).max)


def _file_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "layer"
    cand, i = f"{base}.npy", 1
    while cand in taken or cand == "meta.json":
        cand, i = f"{base}_{i}.npy", i + 1
    taken.add(cand)
    return cand


def _meta(acts_shapes: Mapping[str, tuple], files: Mapping[str, str], meta: Mapping | None,
          dtype: str = "float32") -> dict:
    out = dict(meta or {})
    out["format"] = STORE_FORMAT
    out["layers"] = [{"name": n, "file": files[n], "shape": [int(s) for s in shp], "dtype": dtype}
                     for n, shp in acts_shapes.items()]
    return out


def _store_dtype(dtype: str):
    if dtype not in STORE_DTYPES:
        raise ValueError(f"activations.dtype: {dtype!r} is not one of {sorted(STORE_DTYPES)}")
    return STORE_DTYPES[dtype]


def _fit_dtype(a, name: str, dtype: str):
    """``a`` as stored; float16 refuses values it would turn into inf rather than store them silently."""
    if dtype == "float16":
        a = np.asarray(a)
        if a.size and float(np.nanmax(np.abs(a))) > _F16_MAX:
            raise ValueError(f"activations.dtype: layer {name!r} has values beyond float16's range "
                             f"({_F16_MAX:g}); store it as float32")
    return a


def save_store(out_dir: str | Path, acts: Mapping[str, Any], meta: Mapping | None = None,
               dtype: str = "float32") -> Path:
    """Write ``acts`` as one ``.npy`` per layer (``dtype``: float32 or float16) plus ``meta.json``.

    ``meta`` should hold e.g. ``checkpoint``, ``probe_fingerprint``
    (:func:`probe_fingerprint`), ``mode``; layer names, files and shapes are
    added.  Each file is written atomically; ``meta.json`` last.
    """
    out_dir = Path(out_dir)
    np_dtype = _store_dtype(dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Rewriting a store: drop its meta.json first, so that a kill while the layer files are
    # replaced one by one leaves an incomplete store (refused), never old and new layers mixed.
    (out_dir / "meta.json").unlink(missing_ok=True)
    taken: set[str] = set()
    files = {n: _file_name(n, taken) for n in acts}
    shapes = {}
    for n, a in acts.items():
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)  # a torch tensor, without importing torch
        a = _fit_dtype(a, n, dtype)
        shapes[n] = a.shape
        with atomic_path(out_dir / files[n]) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=a.shape)
            step = max(1, (64 << 20) // max(1, a[0].nbytes if a.ndim and a.shape[0] else 1))
            for s in range(0, a.shape[0] if a.ndim else 0, step):
                mm[s:s + step] = a[s:s + step]
            mm.flush()
            del mm
    atomic_write_json(out_dir / "meta.json", _meta(shapes, files, meta, dtype))
    return out_dir


def load_store(store_dir: str | Path, mmap: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Memory-mapped ``{name: array}`` (in ``meta['layers']`` order) and the metadata.

    Raises :class:`CheckpointError` naming the file if ``meta.json`` or a
    layer file is missing, unreadable, truncated, or its shape differs
    from the metadata.
    """
    store_dir = Path(store_dir)
    recover = f"delete {store_dir} and rerun the activation-capture step (snakemake reruns it)"
    meta_path = store_dir / "meta.json"
    if not meta_path.exists():
        raise CheckpointError(f"{meta_path}: missing (incomplete activation store); {recover}")
    try:
        meta = json.loads(meta_path.read_text())
        layers = meta["layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable metadata ({exc}); {recover}") from exc
    if meta.get("format") != STORE_FORMAT:
        raise CheckpointError(f"{meta_path}: not an activation store (format {meta.get('format')!r})")
    acts: dict[str, np.ndarray] = {}
    for entry in layers:
        path = store_dir / entry["file"]
        if not path.exists():
            raise CheckpointError(f"{path}: missing layer file for {entry['name']!r}; {recover}")
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: truncated or corrupt .npy ({exc}); {recover}") from exc
        expected = tuple(entry["shape"])
        if tuple(arr.shape) != expected:
            raise CheckpointError(f"{path}: shape {tuple(arr.shape)} != {expected} in meta.json; {recover}")
        if str(arr.dtype) != entry.get("dtype", "float32"):
            raise CheckpointError(f"{path}: dtype {arr.dtype} != {entry.get('dtype', 'float32')} in meta.json; {recover}")
        if mmap and path.stat().st_size < arr.offset + arr.nbytes:
            raise CheckpointError(f"{path}: truncated ({path.stat().st_size} bytes); {recover}")
        acts[entry["name"]] = arr
    return acts, meta
