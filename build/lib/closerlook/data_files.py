"""Readers of the on-disk formats behind :mod:`closerlook.data`: Fashion-MNIST's idx files (Debian's
``dataset-fashion-mnist`` or a torchvision root) and image folders (a directory or a zip in the
ImageFolder layout, decoded in the fixed class-mixed order ``catalog.FOLDER_ORDER``). Each returns
uint8 image tensors and int64 labels; caching, subsets and normalisation stay in :mod:`closerlook.data`.
"""
from __future__ import annotations

import gzip
import io as _io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from .catalog import FOLDER_ORDER_SEED
from .io import CloserlookError

DEFAULT_FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# --- Fashion-MNIST idx files

def _fmnist_dir(root) -> Path:
    candidates = []
    if root is None:
        candidates.append(DEFAULT_FMNIST_ROOT)
    else:
        root = Path(root)
        candidates += [root / "FashionMNIST" / "raw", root]
    for d in candidates:
        if all(_idx_file(d, f) is not None for pair in _FMNIST_FILES.values() for f in pair):
            return d
    tried = ", ".join(str(d) for d in candidates)
    raise CloserlookError(
        f"Fashion-MNIST not found (looked for train-images-idx3-ubyte[.gz] etc. in {tried}); "
        "install it with `apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist) "
        "or point data.root at a torchvision root holding FashionMNIST/raw")


def _idx_file(d: Path, stem: str) -> Path | None:
    for cand in (d / f"{stem}.gz", d / stem):
        if cand.is_file():
            return cand
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise CloserlookError(f"{path}: cannot read idx file ({exc}); reinstall dataset-fashion-mnist") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise CloserlookError(f"{path}: not an unsigned-byte idx file (bad magic)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise CloserlookError(f"{path}: truncated idx file ({len(data) - offset} bytes of data, expected {expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


# --- ImageFolder (directory or zip)

def _load_imagefolder(root: Path, split: str, how_to_get: str = "") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    hint = f"; {how_to_get}" if how_to_get else ""
    if not root.exists():
        raise CloserlookError(f"{root}: image folder / zip not found{hint}")
    if root.is_file():
        if not zipfile.is_zipfile(root):
            raise CloserlookError(f"{root}: not a zip file nor a directory{hint}")
        with zipfile.ZipFile(root) as zf:
            entries = _zip_entries(zf, root, split)
            classes = sorted({c for c, _ in entries})
            return _decode(_class_mixed(entries), classes, lambda m: zf.read(m), root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise CloserlookError(f"{split_dir}: missing split folder (expected {root}/{split}/<class>/*.jpg){hint}")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    entries = []
    for c in classes:
        for dirpath, _, files in sorted(os.walk(split_dir / c, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    entries.append((c, os.path.join(dirpath, f)))
    if not entries:
        raise CloserlookError(f"{split_dir}: no images found (expected <class>/*.jpg|png){hint}")
    return _decode(_class_mixed(entries), classes, lambda p: Path(p).read_bytes(), root)


def _class_mixed(entries: list) -> list:
    """``entries`` (sorted by class, then path) in the stored folder order: ``FOLDER_ORDER``'s
    fixed permutation (CPU generator: the same on every machine and device)."""
    g = torch.Generator().manual_seed(FOLDER_ORDER_SEED)
    return [entries[i] for i in torch.randperm(len(entries), generator=g).tolist()]


def _zip_entries(zf: zipfile.ZipFile, root: Path, split: str) -> list[tuple[str, str]]:
    by_prefix: dict[str, list[tuple[str, str]]] = {}
    for m in zf.namelist():
        if m.endswith("/") or not m.lower().endswith(IMG_EXTENSIONS):
            continue
        parts = m.split("/")
        # find the split component: prefix/.../split/class/file
        for i in range(len(parts) - 2):
            if parts[i] == split:
                prefix = "/".join(parts[:i])
                by_prefix.setdefault(prefix, []).append((parts[i + 1], m))
                break
    if not by_prefix:
        raise CloserlookError(f"{root}: zip holds no images under '{split}/<class>/' (ImageFolder layout expected)")
    prefix = min(by_prefix, key=lambda p: (p.count("/"), len(p)))
    entries = by_prefix[prefix]
    entries.sort(key=lambda e: (e[0], e[1]))
    return entries


def _decode(entries, classes, read, root) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from PIL import Image

    class_idx = {c: i for i, c in enumerate(classes)}
    first = None
    out = None
    labels = np.empty(len(entries), dtype=np.int64)
    for k, (c, member) in enumerate(entries):
        try:
            with Image.open(_io.BytesIO(read(member))) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise CloserlookError(f"{root}: cannot decode image {member}: {exc}") from exc
        if out is None:
            first = arr.shape
            out = np.empty((len(entries), *arr.shape), dtype=np.uint8)
        elif arr.shape != first:
            raise CloserlookError(f"{root}: image {member} has shape {arr.shape}, others {first}; "
                                  "all images must have the same size")
        out[k] = arr
        labels[k] = class_idx[c]
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(labels), list(classes)
