"""Rules of workflow/rules/data.smk: decode a data set once, describe the subsets and the probe set."""
from __future__ import annotations

from typing import Mapping


from ..data import load_split, load_subsets, probe_fingerprint, probe_set
from ..io import atomic_write_json
from ._common import Log


def prepare_data(source: Mapping, cache_dir: str, log: Log = print) -> None:
    """Decode both splits of ``source`` ({name, root, download}) once into ``cache_dir``."""
    for split in ("train", "test"):
        images, _, _ = load_split(source["name"], split, root=source.get("root"), cache_dir=cache_dir,
                                  download=source.get("download", True))
        log(f"{source['name']} {split}: {tuple(images.shape)} -> {cache_dir}")


def data_info(data: Mapping, probe_size: int, out: str) -> dict:
    """The subsets and the probe set a config uses (sizes, probe fingerprint), as JSON."""
    xtr, ytr, xte, yte, info = load_subsets(dict(data))
    probe = probe_set(xtr, probe_size)
    facts = {"data": dict(data), "info": info, "train_images": int(ytr.numel()), "test_images": int(yte.numel()),
             "probe": {"size": int(probe.shape[0]), "fingerprint": probe_fingerprint(probe)}}
    atomic_write_json(out, facts)
    return facts
