"""Rules of workflow/rules/sharpness.smk: Hessian spectra along a path and at checkpoints."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import curves
from ..devices import resolve_device
from ..io import load_checkpoint
from ..tables import SHARPNESS_COLUMNS, write_csv
from ._common import Log, _endpoint, _module, _data_block, _eval_loaders, _diverged_table, _state_on
from ..settings_types import SharpnessSettings


def _sharpness_rows(module, states, labels, ts, settings, data, dev, log) -> pd.DataFrame:
    from ..sharpness import sharpness_at, subset_batches

    d = _data_block(data)
    bn_loader, _ = _eval_loaders(d, dev, settings["eval_train_images"], settings["eval_batch_size"])
    sub, _ = _eval_loaders(d, dev, settings["images"], settings["batch_size"])
    batches = subset_batches(sub, int(settings["images"]))
    rows = []
    for t, label, state in zip(ts, labels, states):
        r = sharpness_at(module, state(), bn_loader, batches, lanczos_steps=int(settings["lanczos_steps"]),
                         probes=int(settings["probes"]), seed=int(settings["seed"]), bn_batches=settings["bn_batches"])
        rows.append({"t": t, "label": label, **r, "status": "ok" if np.isfinite(r["loss"]) else "diverged"})
        log(f"{label} t={t:.3f} loss={r['loss']:.4f} lambda_max={r['lambda_max']:.4g} lambda_min={r['lambda_min']:.4g} "
            f"trace={r['trace']:.4g}+-{r['trace_se']:.2g}")
    return pd.DataFrame(rows, columns=SHARPNESS_COLUMNS)


def sharpness_path(start: str, end: str, out: str, settings: Mapping, data: Mapping, curve: str | None = None,
                   device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> None:
    """Sharpness (:func:`closerlook.sharpness.sharpness_at`) at ``points`` t along the fitted curve or the line."""
    s = SharpnessSettings.of(settings)
    label = "curve" if curve else "line"
    ts = [float(t) for t in np.linspace(0.0, 1.0, int(s["points"]))]
    a, b = _endpoint(start), _endpoint(end)
    if a is None or b is None or (curve and load_checkpoint(curve)["meta"].get("status") == "diverged"):
        write_csv(_diverged_table(SHARPNESS_COLUMNS, label=label), out)
        log("an endpoint (or the curve) diverged: wrote a table marked diverged")
        return
    dev = resolve_device(device)
    module = _module(a, start, dev, factories)
    path = curves.load_curve(curve, module, map_location=dev) if curve else curves.line(module, a["model"], b["model"])
    path.to(dev)

    def at(t):
        @torch.no_grad()
        def state():
            return {k: v.detach().clone() for k, v in path.weights_at(t).items()}
        return state

    write_csv(_sharpness_rows(module, [at(t) for t in ts], [label] * len(ts), ts, s, data, dev, log), out)


def sharpness_checkpoint(ckpt: str, label: str, out: str, settings: Mapping, data: Mapping, device: Any = "auto",
                         log: Log = print, factories: Sequence[str] = ()) -> None:
    """Sharpness of one checkpoint (one row, ``t`` NaN)."""
    s = SharpnessSettings.of(settings)
    ck = _endpoint(ckpt)
    if ck is None:
        write_csv(_diverged_table(SHARPNESS_COLUMNS, label=label), out)
        log("the checkpoint diverged: wrote a row marked diverged")
        return
    dev = resolve_device(device)
    module = _module(ck, ckpt, dev, factories)
    write_csv(_sharpness_rows(module, [lambda: _state_on(ck, dev)], [label], [float("nan")], s, data, dev, log), out)
