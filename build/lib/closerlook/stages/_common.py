"""What every stage shares: reading an endpoint or a diverged marker, rebuilding its module, the data block, evaluation loaders, diverged tables."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..data import DeviceLoader, load_subsets
from ..io import ConfigError, load_checkpoint
from ..models import model_from_checkpoint


Log = Callable[[str], Any]


# keys of a data block handed to the library, in the order the checkpoints record them
_DATA_KEYS = ("name", "root", "cache_dir", "train_per_class", "test_per_class", "subset_seed")


def _endpoint(path: str) -> dict | None:
    """A checkpoint's weights and meta; None when the run had diverged by then."""
    ck = load_checkpoint(path)
    meta = ck.get("meta") or {}
    if ck["model"] is None or meta.get("status") == "diverged":
        return None
    return {"meta": meta, "model": ck["model"]}


def _module(ck: Mapping, path: str, device, factories: Sequence[str]):
    return model_from_checkpoint({"meta": ck["meta"], "model": None}, path, allow=factories).to(device)


def _data_block(data: Mapping) -> dict:
    if "name" not in data:
        raise ConfigError("data: no data set name")
    return {k: data[k] for k in _DATA_KEYS if data.get(k) is not None}


def _eval_loaders(data: Mapping, device, eval_train_images: int | None, batch_size: int):
    """Unaugmented, unshuffled loaders: the first ``eval_train_images`` training images (all: None), all test images."""
    xtr, ytr, xte, yte, info = load_subsets(dict(data))
    if eval_train_images:
        xtr, ytr = xtr[:eval_train_images], ytr[:eval_train_images]
    kw = dict(mean=info["mean"], std=info["std"], device=device, augment=False, shuffle=False, seed=0, drop_last=False)
    return DeviceLoader(xtr, ytr, batch_size, **kw), DeviceLoader(xte, yte, batch_size, **kw)


def _diverged_table(columns: Sequence[str], **fixed) -> pd.DataFrame:
    row = {c: float("nan") for c in columns}
    row.update(fixed, status="diverged")
    return pd.DataFrame([row], columns=list(columns) + ([] if "status" in columns else ["status"]))


def _state_on(ck: Mapping, dev) -> dict:
    return {k: v.to(dev) for k, v in ck["model"].items()}
