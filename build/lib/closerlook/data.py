"""Data sets as cached uint8 tensors, stratified subsets, and a device-resident loader.

Data sets (``load_split(name, split, root=None, cache_dir=None)``):

- ``cifar10``: torchvision's CIFAR-10 (``root`` default ``resources/data/torchvision``;
  downloaded by torchvision when missing and ``download=True``).
- ``fashion_mnist``: the four idx ``.gz`` files, either torchvision's layout
  (``root/FashionMNIST/raw``) or a flat directory such as Debian's
  ``/usr/share/datasets/fashion-mnist`` (the default when ``root`` is None).
- ``imagefolder``: an ImageFolder tree (``root/{train,test}/<class>/*.jpg|png``)
  or a ``.zip`` of one, read straight from the zip. Images are converted to RGB
  (like torchvision's loader); classes sorted (label = index in that list). The images are
  stored in a fixed pseudo-random, class-mixed order (``FOLDER_ORDER``, below), not in the
  class-by-class order of the folders. mean/std are computed on the train split.
- ``cifar10_jpeg``: ``imagefolder`` with default root
  ``<repo>/../shared/data/cifar10-jpeg.zip`` and CIFAR-10 mean/std.
- ``torchvision:<Class>`` (e.g. ``torchvision:SVHN``, ``torchvision:MNIST``): a class of
  ``torchvision.datasets`` that follows ``Class(root, train=bool | split="train"|"test",
  transform=None, download=bool)`` (``root`` default ``resources/data/torchvision``; downloads
  only with ``download=True``, as ``cifar10``). Every sample is read once through the class's
  ``__getitem__`` (PIL image or array: grey -> 1 channel, RGB -> 3); mean/std are computed on the
  train split; classes from the class's ``classes`` attribute (else ``0..max label``).

Each split is prepared once into ``{cache_dir}/{name}-{split}.pt`` (written
atomically; a dict of tensors and plain values, loaded with
``weights_only=True``) and reused. ``cache_dir=None`` means no disk cache.

Stored order. Downstream code takes "the first N images" as a sample (the probe set, the
``eval_train_images`` of curves and planes, sharpness batches), and stratified subsets keep the
stored order. CIFAR-10's and Fashion-MNIST's files come class-mixed and are stored as read, as
are ``torchvision:<Class>`` sets (in the class's own order, which is not checked). Folder layouts
come class by class, so ``imagefolder`` / ``cifar10_jpeg`` are stored permuted by
``torch.randperm(N)`` of a CPU ``torch.Generator`` seeded with ``FOLDER_ORDER_SEED`` (N = images
in the split), applied to the files sorted by (class, path): the same order on every machine and
every decode, depending only on the file list. Caches of folder sets record that order
(``FOLDER_ORDER``); a cache without it (the class-sorted order of closerlook before it) is
re-decoded, with a warning.

``DeviceLoader`` keeps the whole set as one uint8 tensor on the device and does
the crop (zero padding of the raw image, as torchvision's
``RandomCrop(padding=4)`` before ``ToTensor``/``Normalize``) and the flip as
batched tensor ops. Its shuffling order and augmentation draws come from CPU
``torch.Generator`` objects seeded from ``(seed, epoch)`` (and the batch index
for augmentation), so an epoch can be replayed from any batch and CPU and CUDA
see the same order.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .io import CheckpointError, CloserlookError, ConfigError, atomic_path, safe_torch_load
from .data_files import (DEFAULT_FMNIST_ROOT, IMG_EXTENSIONS, _class_mixed, _decode, _fmnist_dir,  # noqa: F401
                         _idx_file, _load_imagefolder, _read_idx, _zip_entries, _FMNIST_FILES)
from .catalog import (DATASET_NAMES, FOLDER_ORDER, FOLDER_ORDER_SEED, FOLDER_SETS, KNOWN_DIMS,  # noqa: F401 (torch-free, in catalog: planning imports no torch)
                      PROBE_SIZE, SOURCE_ORDER, TORCHVISION_PREFIX, known_dims, stored_order)

CACHE_FORMAT = "closerlook-data/1"

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CIFAR_JPEG = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
DEFAULT_TORCHVISION_ROOT = Path("resources/data/torchvision")

SPLITS = ("train", "test")




# ----------------------------------------------------------------------------- public API

def load_split(name: str, split: str, root: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, *,
               download: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Return ``(images uint8 [N,C,H,W], labels int64 [N], info)`` of one split.

    ``info = {"name", "num_classes", "in_channels", "image_size", "mean", "std", "classes"}``.
    ``download`` only matters for ``cifar10`` (torchvision download when missing).
    """
    _check_name(name)
    if split not in SPLITS:
        raise ConfigError(f"data.split: unknown split {split!r} of data set {name!r}; known: {', '.join(SPLITS)}")
    source, order = _source_id(name, root), stored_order(name)
    cache = None if cache_dir is None else Path(cache_dir) / f"{name}-{split}.pt"
    if cache is not None and cache.exists():
        cached = _read_cache(cache, source, order)
        if cached is not None:
            return cached
    images, labels, info = _prepare(name, split, root, cache_dir, download)
    images = images.contiguous()
    labels = labels.to(torch.int64).contiguous()
    if cache is not None:
        entry = {"format": CACHE_FORMAT, "source": source, "images": images, "labels": labels, "info": info}
        if order != SOURCE_ORDER:  # source-order caches keep the keys they had before "order" existed
            entry["order"] = order
        with atomic_path(cache) as tmp:
            torch.save(entry, tmp)
    return images, labels, info


def dataset_info(name: str, root: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None) -> dict:
    """Metadata of a data set (same dict as ``load_split``'s info), cheaply when possible.

    Static for cifar10, fashion_mnist and cifar10_jpeg; for a generic
    imagefolder it reads the train cache if present, otherwise prepares the
    train split (mean/std need all its pixels).
    """
    _check_name(name)
    if name == "cifar10":
        return _static_info("cifar10", 3, 32, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES)
    if name == "fashion_mnist":
        return _static_info("fashion_mnist", 1, 28, FMNIST_MEAN, FMNIST_STD, FMNIST_CLASSES)
    if name == "cifar10_jpeg":
        return _static_info("cifar10_jpeg", 3, 32, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES)
    return load_split(name, "train", root=root, cache_dir=cache_dir)[2]


def stratified_subset(labels: torch.Tensor, per_class: int | None, seed: int) -> torch.Tensor:
    """Sorted int64 indices: ``per_class`` random samples of every class (seeded).

    Sorted, so the subset keeps the stored order (class-mixed for CIFAR-10, Fashion-MNIST and the
    folder sets: see the module docstring), and its first N images are a class-mixed sample too.
    ``per_class=None`` returns all indices. A class with fewer than
    ``per_class`` samples is a ConfigError.
    """
    labels = torch.as_tensor(labels).to("cpu", torch.int64)
    if per_class is None:
        return torch.arange(len(labels), dtype=torch.int64)
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ConfigError(f"per_class: must be a positive integer or null, got {per_class!r}")
    g = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ConfigError(f"per_class: class {c} has only {len(idx)} samples, fewer than per_class={per_class}")
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.sort(torch.cat(chosen)).values


def probe_set(images: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` images in their fixed order (unaugmented, uint8)."""
    if n < 1 or n > len(images):
        raise ConfigError(f"probe size: n={n} must be between 1 and the number of images ({len(images)})")
    return images[:n]


def probe_fingerprint(images: torch.Tensor | np.ndarray) -> str:
    """sha256 of the probe images' dtype, shape and bytes (first 16 hex digits): the one recipe,
    so ``data/info.json`` and every activation store name the same probe set alike."""
    arr = images.detach().cpu().contiguous().numpy() if isinstance(images, torch.Tensor) else np.ascontiguousarray(images)
    h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:16]


class DeviceLoader:
    """The whole set on ``device`` as uint8; batches are normalised float32 tensors.

    ``batches(epoch, start=0)`` yields ``(x, y)`` of epoch ``epoch`` from batch
    index ``start``. The order of epoch e comes from a CPU generator seeded by
    ``(seed, e)``; the crop offsets and flips of batch b from one seeded by
    ``(seed, e, b)``. Iterating the loader itself runs ``self.epoch`` and then
    increments it.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 mean: Sequence[float], std: Sequence[float], augment: bool, shuffle: bool,
                 seed: int, device: str | torch.device = "cpu", drop_last: bool = False,
                 pad: int = 4, channels_last: bool = False) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise CloserlookError(f"DeviceLoader: images must be uint8 [N,C,H,W], got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise CloserlookError(f"DeviceLoader: {len(images)} images but {len(labels)} labels")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size: must be a positive integer, got {batch_size!r}")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ConfigError(f"mean/std: need {c} values (one per channel), got {len(mean)}/{len(std)}")
        if pad < 0:
            raise ConfigError(f"pad: must be >= 0, got {pad}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = torch.as_tensor(labels).to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.augment = bool(augment)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.pad = int(pad)
        self.channels_last = bool(channels_last)
        self.epoch = 0
        h, w = images.shape[2], images.shape[3]
        self._ar_h = torch.arange(h, device=self.device)
        self._ar_w = torch.arange(w, device=self.device)
        self._ar_c = torch.arange(c, device=self.device)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order (CPU int64) of ``epoch``."""
        if not self.shuffle:
            return torch.arange(self.num_samples, dtype=torch.int64)
        g = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, "order"))
        return torch.randperm(self.num_samples, generator=g)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_batches = len(self)
        if start < 0 or start > n_batches:
            raise CloserlookError(f"DeviceLoader.batches: start={start} outside 0..{n_batches}")
        order = self.order(epoch)
        for b in range(start, n_batches):
            idx_cpu = order[b * self.batch_size:(b + 1) * self.batch_size]
            idx = idx_cpu.to(self.device, non_blocking=True)
            raw = self.images.index_select(0, idx)
            if self.augment:
                raw = self._augment(raw, epoch, b)
            x = self._normalise(raw)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)

    def _normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw.to(torch.float32).div_(255.0) - self.mean).div_(self.std)

    def _augment(self, raw: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        """Random crop with zero padding (of the raw image) + horizontal flip, batched."""
        bsz, c, h, w = raw.shape
        p = self.pad
        g = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, "augment", batch))
        offsets = torch.randint(0, 2 * p + 1, (bsz, 2), generator=g)
        flips = torch.rand(bsz, generator=g) < 0.5
        offsets = offsets.to(self.device, non_blocking=True)
        flips = flips.to(self.device, non_blocking=True)
        if p > 0:
            padded = raw.new_zeros((bsz, c, h + 2 * p, w + 2 * p))
            padded[:, :, p:p + h, p:p + w] = raw
        else:
            padded = raw
        rows = offsets[:, 0:1] + self._ar_h.view(1, h)                      # [B,H]
        cols_fwd = self._ar_w.view(1, w)
        cols = torch.where(flips.view(bsz, 1), (w - 1) - cols_fwd, cols_fwd) + offsets[:, 1:2]  # [B,W]
        b_idx = torch.arange(bsz, device=self.device).view(bsz, 1, 1, 1)
        return padded[b_idx, self._ar_c.view(1, c, 1, 1), rows.view(bsz, 1, h, 1), cols.view(bsz, 1, 1, w)]


def eval_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 mean: Sequence[float], std: Sequence[float],
                 device: str | torch.device = "cpu", channels_last: bool = False) -> DeviceLoader:
    """An unaugmented, unshuffled loader (iterate it as often as needed)."""
    return DeviceLoader(images, labels, batch_size, mean=mean, std=std, augment=False, shuffle=False,
                        seed=0, device=device, drop_last=False, channels_last=channels_last)


def batches_of(loader: Any, epoch: int = 0, start: int = 0) -> Iterator:
    """The batches of one epoch from batch ``start``: a :class:`DeviceLoader`'s own replayable order, or
    any iterable of (x, y) (e.g. a torch DataLoader) skipped to ``start``."""
    if hasattr(loader, "batches"):
        return loader.batches(epoch, start)
    return (b for i, b in enumerate(loader) if i >= start)


# ----------------------------------------------------------------------------- internals

def _mix_seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def check_name(name: Any) -> None:
    """ConfigError naming ``data.name`` unless ``name`` is a built-in set or a usable torchvision class."""
    if isinstance(name, str) and name.startswith(TORCHVISION_PREFIX):
        _torchvision_class(name)
    elif name not in DATASET_NAMES:
        raise ConfigError(f"data.name: unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}, "
                          "or 'torchvision:<Class>' (e.g. torchvision:SVHN)")


_check_name = check_name


def _torchvision_class(name: str):
    import inspect

    import torchvision.datasets as tvd

    attr = name[len(TORCHVISION_PREFIX):]
    cls = getattr(tvd, attr, None) if attr.isidentifier() else None
    if not isinstance(cls, type):
        known = ", ".join(n for n in getattr(tvd, "__all__", []) if isinstance(getattr(tvd, n, None), type))
        raise ConfigError(f"data.name: torchvision.datasets has no class {attr!r}; known: {known}")
    params = inspect.signature(cls).parameters
    if "root" not in params or not ({"train", "split"} & set(params)):
        raise ConfigError(f"data.name: {name} does not follow the (root, train=... | split=..., transform) "
                          f"convention (its parameters: {', '.join(params)}); use imagefolder for such data")
    return cls


def _static_info(name, channels, size, mean, std, classes) -> dict:
    return {"name": name, "num_classes": len(classes), "in_channels": channels, "image_size": size,
            "mean": [float(m) for m in mean], "std": [float(s) for s in std], "classes": list(classes)}


def _source_id(name: str, root) -> str:
    if name == "cifar10_jpeg" and root is None:
        root = DEFAULT_CIFAR_JPEG
    if name == "fashion_mnist" and root is None:
        root = DEFAULT_FMNIST_ROOT
    if (name == "cifar10" or name.startswith(TORCHVISION_PREFIX)) and root is None:
        root = DEFAULT_TORCHVISION_ROOT
    if root is None:
        return f"{name}:"
    return f"{name}:{Path(root).resolve()}"


def _read_cache(path: Path, source: str, order: str):
    try:
        obj = safe_torch_load(path)
    except CheckpointError as exc:
        warnings.warn(f"{path}: unreadable data cache, rebuilding ({exc})")
        return None
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT:
        warnings.warn(f"{path}: not a closerlook data cache, rebuilding")
        return None
    if obj.get("source") != source:
        warnings.warn(f"{path}: cache was made from {obj.get('source')!r}, not {source!r}; rebuilding")
        return None
    held = obj.get("order", SOURCE_ORDER)
    if held != order:
        what = "the class-sorted folder order of an older closerlook" if held == SOURCE_ORDER else f"order {held!r}"
        warnings.warn(f"{path}: cache holds {what}, not {order!r}; re-decoding (results computed from the "
                      "old cache used a different order and different stratified subsets)")
        return None
    return obj["images"], obj["labels"], obj["info"]


def _prepare(name, split, root, cache_dir, download):
    if name == "fashion_mnist":
        return _load_fmnist(split, root)
    if name == "cifar10":
        return _load_cifar10(split, root, download)
    if name.startswith(TORCHVISION_PREFIX):
        return _load_torchvision(name, split, root, cache_dir, download)
    if name == "cifar10_jpeg":
        path = Path(root) if root is not None else DEFAULT_CIFAR_JPEG
        images, labels, classes = _load_imagefolder(path, split, how_to_get=(
            "the project's shared copy lives at ../shared/data/cifar10-jpeg.zip beside the checkout; "
            "or use data.name: cifar10 (torchvision download)"))
        return images, labels, _static_info("cifar10_jpeg", 3, images.shape[2], CIFAR10_MEAN, CIFAR10_STD, classes)
    # imagefolder
    if root is None:
        raise ConfigError("data.root: data set 'imagefolder' needs a root (a directory or .zip with train/ and test/)")
    images, labels, classes = _load_imagefolder(Path(root), split)
    if split == "train":
        mean, std = _mean_std(images)
    else:
        train_info = load_split(name, "train", root=root, cache_dir=cache_dir)[2]
        mean, std = train_info["mean"], train_info["std"]
    info = {"name": "imagefolder", "num_classes": len(classes), "in_channels": int(images.shape[1]),
            "image_size": int(images.shape[2]), "mean": mean, "std": std, "classes": classes}
    return images, labels, info


def _mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std (population) of the pixels in [0, 1], exact via histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return means, stds


# --- Fashion-MNIST

def _load_fmnist(split: str, root):
    d = _fmnist_dir(root)
    img_stem, lbl_stem = _FMNIST_FILES[split]
    imgs = _read_idx(_idx_file(d, img_stem))
    lbls = _read_idx(_idx_file(d, lbl_stem))
    if imgs.ndim != 3 or lbls.ndim != 1 or len(imgs) != len(lbls):
        raise CloserlookError(f"{d}: Fashion-MNIST {split} files have inconsistent shapes {imgs.shape} / {lbls.shape}")
    images = torch.from_numpy(imgs.copy()).unsqueeze(1)
    labels = torch.from_numpy(lbls.astype(np.int64))
    return images, labels, _static_info("fashion_mnist", 1, int(imgs.shape[1]), FMNIST_MEAN, FMNIST_STD, FMNIST_CLASSES)


# --- CIFAR-10 through torchvision

def _load_cifar10(split: str, root, download: bool):
    from torchvision.datasets import CIFAR10

    root = Path(root) if root is not None else DEFAULT_TORCHVISION_ROOT
    present = (root / "cifar-10-batches-py").is_dir()
    try:
        ds = CIFAR10(str(root), train=(split == "train"), download=download and not present)
    except Exception as exc:  # network errors, missing files, corrupt archive
        raise CloserlookError(
            f"CIFAR-10 not available under {root} (expected {root / 'cifar-10-batches-py'}): "
            f"{type(exc).__name__}: {exc}. Run once with internet access (download=True) or copy the "
            "extracted cifar-10-batches-py folder there; offline, use data.name: cifar10_jpeg "
            "(../shared/data/cifar10-jpeg.zip)") from exc
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return images, labels, _static_info("cifar10", 3, 32, CIFAR10_MEAN, CIFAR10_STD, list(ds.classes))


# --- any torchvision data set class of the (root, train | split, transform, download) convention

def _load_torchvision(name: str, split: str, root, cache_dir, download: bool):
    import inspect

    cls = _torchvision_class(name)
    root = Path(root) if root is not None else DEFAULT_TORCHVISION_ROOT
    params = inspect.signature(cls).parameters
    kw: dict[str, Any] = {"train": split == "train"} if "train" in params else {"split": split}
    if "download" in params:
        kw["download"] = bool(download)
    try:
        ds = cls(str(root), **kw)
    except Exception as exc:  # missing / corrupt files, network errors: the class's own message
        raise CloserlookError(
            f"{name} ({split}) not available under {root}: {type(exc).__name__}: {exc}. Put the files where "
            f"torchvision.datasets.{cls.__name__} expects them under data.root, or run once with internet "
            "access and data.download: true") from exc
    images, labels = _read_samples(ds, name)
    classes = [str(c) for c in (getattr(ds, "classes", None) or range(int(labels.max()) + 1))]
    if split == "train":
        mean, std = _mean_std(images)
    else:
        mean, std = [load_split(name, "train", root=root, cache_dir=cache_dir, download=download)[2][k]
                     for k in ("mean", "std")]
    info = {"name": name, "num_classes": len(classes), "in_channels": int(images.shape[1]),
            "image_size": int(images.shape[2]), "mean": mean, "std": std, "classes": classes}
    return images, labels, info


def _read_samples(ds, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (image, label) of a torchvision data set through its ``__getitem__``, as uint8 NCHW + int64."""
    n = len(ds)
    if n == 0:
        raise CloserlookError(f"{name}: the data set is empty")
    out, labels = None, np.empty(n, dtype=np.int64)
    for i in range(n):
        img, target = ds[i]
        if isinstance(img, torch.Tensor):  # CHW (or HW) tensors of classes that skip PIL
            arr = img.numpy().transpose(1, 2, 0) if img.ndim == 3 else img.numpy()
        else:
            arr = np.asarray(img.convert("RGB") if getattr(img, "mode", "L") not in ("L", "RGB") else img)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        if out is None:
            out = np.empty((n, *arr.shape), dtype=np.uint8)
        elif arr.shape != out.shape[1:]:
            raise CloserlookError(f"{name}: sample {i} has shape {arr.shape}, others {out.shape[1:]}")
        out[i] = arr
        labels[i] = int(target)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def load_subsets(spec: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """The train and test images of a data spec, with its stratified subsets applied.

    ``spec``: ``{name, root, cache_dir, train_per_class, test_per_class, subset_seed}``
    (the ``data`` block of a run spec). Returns ``(train_x, train_y, test_x, test_y, info)``.
    """
    seed = spec.get("subset_seed", 0) or 0
    out: list[torch.Tensor] = []
    info: dict = {}
    for split in SPLITS:
        x, y, info_split = load_split(spec["name"], split, root=spec.get("root"), cache_dir=spec.get("cache_dir"))
        info = info or info_split
        per_class = spec.get(f"{split}_per_class")
        if per_class is not None:
            idx = stratified_subset(y, per_class, seed)
            x, y = x[idx], y[idx]
        out += [x, y]
    return out[0], out[1], out[2], out[3], info
