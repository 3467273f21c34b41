"""Capture layer activations with forward hooks; per-layer ``.npy`` stores.

* :func:`capture` runs a model (``eval()``, ``torch.no_grad()``) over a probe
  set in batches and returns ``{layer name: array}``: ``mode="pool"`` gives
  ``(N, C)`` (spatial mean), ``"full"`` gives ``(N, C, H, W)``,
  ``"subsample"`` gives ``(N*K, C)`` with ``K`` spatial positions per image
  (seeded; the positions depend only on ``(seed, image index, H, W, K)``, so
  two networks probed with the same seed share datapoints).  2-D outputs
  (fully connected layers) are ``(N, F)`` in every mode.
* :func:`capture_to_store` does the same but streams each batch into
  memory-mapped ``.npy`` files (for probe sets that do not fit in memory).
* :func:`save_store` / :func:`load_store` (the store format, torch-free, in
  :mod:`closerlook.activation_store`; re-exported here).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .data import probe_fingerprint
from .activation_store import (STORE_DTYPES, STORE_FORMAT, _file_name, _fit_dtype, _meta, _store_dtype,  # noqa: F401
                               load_store, save_store)
from .io import atomic_path, atomic_write_json
from .defaults import CAPTURE_DEFAULTS  # noqa: F401 (torch-free: planning imports no torch)
from .models import analysis_layers
from .defaults import CAPTURE_MODES as MODES  # (torch-free owner)

_POS_BLOCK = 1024


def resolve_layers(model: nn.Module, layers: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """``{display name: module qualified name}``; ``None`` -> ``models.analysis_layers(model)``."""
    if layers is None:
        layers = analysis_layers(model)
    if isinstance(layers, Mapping):
        out = {str(k): str(v) for k, v in layers.items()}
    else:
        out = {str(v): str(v) for v in layers}
    modules = dict(model.named_modules())
    missing = [q for q in out.values() if q not in modules]
    if missing:
        raise ValueError(f"model has no module(s) {missing}; known e.g. {list(modules)[1:8]}")
    if not out:
        raise ValueError("no layers to capture")
    return out


def _positions(seed: int, start: int, stop: int, hw: int, k: int) -> np.ndarray:
    """K distinct spatial positions per image for images [start, stop), batch-independent."""
    out = []
    for block in range(start // _POS_BLOCK, (stop - 1) // _POS_BLOCK + 1):
        rng = np.random.default_rng([seed, hw, k, block])
        keys = rng.random((_POS_BLOCK, hw))
        idx = np.argsort(keys, axis=1)[:, :k]
        lo = max(start, block * _POS_BLOCK) - block * _POS_BLOCK
        hi = min(stop, (block + 1) * _POS_BLOCK) - block * _POS_BLOCK
        out.append(idx[lo:hi])
    return np.concatenate(out, axis=0)


def _reduce(out: torch.Tensor, mode: str, subsample: int, seed: int, start: int) -> torch.Tensor:
    out = out.detach().float()
    if out.ndim <= 2 or mode == "full":
        return out.reshape(out.shape[0], -1) if out.ndim == 1 else out
    if mode == "pool":
        return out.flatten(2).mean(-1)
    # subsample: (B, C, *spatial) -> (B*K, C)
    b, c = out.shape[:2]
    flat = out.flatten(2)                       # (B, C, HW)
    hw = flat.shape[-1]
    if subsample > hw:
        raise ValueError(f"subsample={subsample} > {hw} spatial positions")
    pos = torch.as_tensor(_positions(seed, start, start + b, hw, subsample), device=flat.device)
    picked = torch.gather(flat, 2, pos[:, None, :].expand(b, c, subsample))   # (B, C, K)
    return picked.permute(0, 2, 1).reshape(b * subsample, c)


def _prepare(batch: torch.Tensor, device, mean, std, transform) -> torch.Tensor:
    batch = batch.to(device)
    if batch.dtype == torch.uint8:
        batch = batch.float().div_(255.0)
    else:
        batch = batch.float()
    if mean is not None:
        m = torch.as_tensor(mean, dtype=batch.dtype, device=device).view(1, -1, *([1] * (batch.ndim - 2)))
        batch = batch - m
    if std is not None:
        s = torch.as_tensor(std, dtype=batch.dtype, device=device).view(1, -1, *([1] * (batch.ndim - 2)))
        batch = batch / s
    if transform is not None:
        batch = transform(batch)
    return batch


def iter_batches(model: nn.Module, layers, images, *, batch_size: int = 256, mean=None, std=None,
                 transform: Callable | None = None, mode: str = "pool", subsample: int = 1,
                 seed: int = 0, device: str | torch.device = "cpu") -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield ``(start index, {name: float32 array})`` per batch of images."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    names = resolve_layers(model, layers)
    images = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
    store: dict[str, torch.Tensor] = {}
    current = {"start": 0}

    def keep(name: str, out: torch.Tensor) -> None:
        store[name] = _reduce(out, mode, subsample, seed, current["start"])

    with _hooked(model, names, keep):
        for start in range(0, images.shape[0], batch_size):
            current["start"] = start
            store.clear()
            model(_prepare(images[start:start + batch_size], device, mean, std, transform))
            missing = [n for n in names if n not in store]
            if missing:
                raise RuntimeError(f"layers {missing} produced no output in the forward pass")
            yield start, {n: store[n].cpu().numpy() for n in names}


@contextlib.contextmanager
def _hooked(model: nn.Module, names: Mapping[str, str], on_output: Callable[[str, torch.Tensor], None]):
    """Forward hooks on the named modules calling ``on_output(display name, output)`` (a tuple output: its first
    element); meanwhile the model in eval mode without gradients; hooks and mode restored after."""
    modules = dict(model.named_modules())

    def hook_for(name):
        def hook(_mod, _inp, out):
            on_output(name, out[0] if isinstance(out, (tuple, list)) else out)
        return hook

    handles = [modules[q].register_forward_hook(hook_for(n)) for n, q in names.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def layer_shapes(model: nn.Module, layers, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """``{display name: output shape of one image}`` (``(C, H, W)`` for a conv layer, ``(F,)`` for a
    linear one) from one forward pass on the meta device: no memory, no weights read. ``model`` must
    already live on the meta device (e.g. built under ``torch.device("meta")``)."""
    names = resolve_layers(model, layers)
    shapes: dict[str, tuple[int, ...]] = {}
    with _hooked(model, names, lambda n, out: shapes.__setitem__(n, tuple(int(d) for d in out.shape[1:]))):
        model(torch.empty(1, *input_shape, device="meta"))
    return {n: shapes[n] for n in names if n in shapes}


def capture(model: nn.Module, layers: Mapping[str, str] | Sequence[str] | None, images, *,
            batch_size: int = 256, mean=None, std=None, transform: Callable | None = None,
            mode: str = "pool", subsample: int = 1, seed: int = 0,
            device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Activations of the named layers on ``images`` (uint8 -> /255, then
    ``(x - mean) / std`` per channel, then ``transform``), in memory.

    ``layers``: ``{display name: qualified module name}``, a list of
    qualified names, or ``None`` for ``models.analysis_layers(model)``.
    The hook records the module's output; a module called more than once
    per forward pass (e.g. the shared ``relu`` inside a torchvision
    ``BasicBlock``) keeps its LAST call's output, so name the block or a
    module used once.  The model is put in eval mode (and restored).
    """
    parts: dict[str, list[np.ndarray]] = {}
    for _, batch in iter_batches(model, layers, images, batch_size=batch_size, mean=mean, std=std,
                                 transform=transform, mode=mode, subsample=subsample, seed=seed,
                                 device=device):
        for n, a in batch.items():
            parts.setdefault(n, []).append(a)
    return {n: np.concatenate(p, axis=0) for n, p in parts.items()}


def capture_to_store(model: nn.Module, layers, images, out_dir: str | Path, *, meta: Mapping | None = None,
                     batch_size: int = 256, mean=None, std=None, transform: Callable | None = None,
                     mode: str = "pool", subsample: int = 1, seed: int = 0,
                     device: str | torch.device = "cpu", dtype: str = "float32") -> Path:
    """:func:`capture` streamed batch by batch into memory-mapped ``.npy`` files of ``dtype``
    (temp files renamed on success), then ``meta.json`` (with ``mode``,
    ``subsample``, ``seed``, ``probe_fingerprint`` added)."""
    out_dir = Path(out_dir)
    np_dtype = _store_dtype(dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    images_t = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
    n_img = images_t.shape[0]
    taken: set[str] = set()
    files: dict[str, str] = {}
    shapes: dict[str, tuple] = {}
    mms: dict[str, np.memmap] = {}
    with contextlib.ExitStack() as stack:
        for start, batch in iter_batches(model, layers, images_t, batch_size=batch_size, mean=mean, std=std,
                                         transform=transform, mode=mode, subsample=subsample, seed=seed,
                                         device=device):
            b_img = min(batch_size, n_img - start)
            for n, a in batch.items():
                per_img = a.shape[0] // b_img          # K for subsampled conv layers, else 1
                if n not in mms:
                    shapes[n] = (n_img * per_img,) + a.shape[1:]
                    files[n] = _file_name(n, taken)
                    tmp = stack.enter_context(atomic_path(out_dir / files[n]))
                    mms[n] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=shapes[n])
                mms[n][start * per_img:start * per_img + a.shape[0]] = _fit_dtype(a, n, dtype)
        for mm in mms.values():
            mm.flush()
        mms.clear()
        # The layer files are renamed into place one by one as this block ends: drop an older
        # store's meta.json first, so that a kill in between leaves an incomplete store (refused),
        # never old and new layers mixed. A failure before this point leaves the old store intact.
        (out_dir / "meta.json").unlink(missing_ok=True)
    m = dict(meta or {})
    m.setdefault("mode", mode)
    m.setdefault("subsample", subsample if mode == "subsample" else None)
    m.setdefault("seed", seed)
    m.setdefault("probe_fingerprint", probe_fingerprint(images_t))
    m.setdefault("n_images", int(n_img))
    atomic_write_json(out_dir / "meta.json", _meta(shapes, files, m, dtype))
    return out_dir
