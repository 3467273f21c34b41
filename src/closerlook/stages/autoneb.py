"""Rule of workflow/rules/autoneb.smk: AutoNEB between two checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .. import landscape
from ..data import DeviceLoader, load_subsets
from ..devices import resolve_device
from ..io import save_checkpoint
from ..tables import write_csv
from ._common import Log, _endpoint, _module, _data_block, _eval_loaders
from ..settings_types import CurveSettings


def autoneb(start: str, end: str, outputs: Mapping[str, str], settings: Mapping, eval_settings: Mapping, data: Mapping,
            device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> None:
    """AutoNEB between two checkpoints: ``outputs["pivots"]`` (autoneb.pt), ``["metrics"]`` (one row per cycle)
    and ``["table"]`` (autoneb.csv: the chain evaluated like a curve, BN recomputed at each t)."""
    from .. import autoneb as neb

    s = neb.check_settings(settings)
    ev = CurveSettings.of(eval_settings)
    a, b = _endpoint(start), _endpoint(end)
    if a is None or b is None:
        save_checkpoint(outputs["pivots"], None, {"status": "diverged", "autoneb": True})
        write_csv(pd.DataFrame([{"cycle": 0, "status": "diverged"}]), outputs["metrics"])
        write_csv(landscape.diverged_path_table(ev["points"], "autoneb"), outputs["table"])
        log("an endpoint diverged: wrote AutoNEB outputs marked diverged")
        return
    dev = resolve_device(device)
    module = _module(a, start, dev, factories)
    d = _data_block(data)
    xtr, ytr, _, _, info = load_subsets(d)
    loader = DeviceLoader(xtr, ytr, s["batch_size"], mean=info["mean"], std=info["std"], device=dev, augment=False,
                          shuffle=True, seed=s["seed"], drop_last=True)
    sa, sb = ({k: v.to(dev) for k, v in e["model"].items()} for e in (a, b))
    path, rows = neb.autoneb(module, sa, sb, loader, s, log=log)
    neb.save_path(outputs["pivots"], path, {"run": f"autoneb:{Path(start).stem}-{Path(end).stem}", "start": str(start),
                                            "end": str(end), "settings": s, "status": "ok"})
    write_csv(rows.assign(status="ok"), outputs["metrics"])
    tr, te = _eval_loaders(d, dev, ev["eval_train_images"], ev["eval_batch_size"])
    write_csv(landscape.evaluate_path(path, tr, te, ts=ev["points"], bn_batches=ev["bn_batches"], log=log), outputs["table"])
