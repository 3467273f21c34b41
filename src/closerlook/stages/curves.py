"""Rules of workflow/rules/curves.smk: fit a curve, evaluate a curve and its line, the plane of Fig. 3."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from .. import curves, landscape
from ..data import DeviceLoader, load_subsets
from ..devices import resolve_device
from ..io import ConfigError, load_checkpoint, save_checkpoint
from ..jobs import publish
from ..tables import write_csv
from ._common import Log, _endpoint, _module, _data_block, _eval_loaders
from ..settings_types import CurveSettings, PlaneSettings


def fit_curve(start: str, end: str, out: str, settings: Mapping, data: Mapping, seed: int = 0,
              device: Any = "auto", outputs: Sequence[str] = (), log: Log = print,
                                                              factories: Sequence[str] = ()) -> None:
    """Fit the bends of a curve between two checkpoints into ``out`` (resumable), then publish onto ``outputs``.

    ``settings``: a curve's settings (:data:`closerlook.curves.FIT_DEFAULTS` keys, e.g. ``kind``,
    ``num_bends``, ``epochs``, ``lr``, ``weight_decay``, ``batch_size``, ``t_per_batch``, ``augment``).
    """
    s = CurveSettings.of(settings)
    a, b = _endpoint(start), _endpoint(end)
    outd = Path(out)
    if a is None or b is None:
        meta = {"status": "diverged", "curve": {"kind": s["kind"], "num_bends": s["num_bends"]}, "start": start, "end": end}
        save_checkpoint(outd / "curve.pt", None, meta)
        nan = float("nan")
        write_csv(pd.DataFrame([{"epoch": 0, "iteration": 0, "lr": nan, "train_loss": nan, "train_acc": nan,
                                 "status": "diverged"}]), outd / "metrics.csv")
        log("an endpoint diverged: wrote outputs marked diverged")
    else:
        dev = resolve_device(device)
        curve = curves.Curve(_module(a, start, dev, factories), a["model"], b["model"], kind=s["kind"],
                             num_bends=s["num_bends"]).to(dev)
        d = _data_block(data)
        xtr, ytr, _, _, info = load_subsets(d)
        loader = DeviceLoader(xtr, ytr, s["batch_size"], mean=info["mean"], std=info["std"], device=dev,
                              augment=bool(s["augment"]), shuffle=True, seed=seed, drop_last=False)
        fit = {"epochs": s["epochs"], "lr": s["lr"], "wd": s["weight_decay"], "momentum": s["momentum"],
               "batch_size": s["batch_size"], "t_per_batch": s["t_per_batch"], "schedule": s["schedule"],
               **({"plateau_patience": s["plateau_patience"]} if s["plateau_patience"] != 1 else {}),
               "t_sampling": s["t_sampling"], "t_split": bool(s["t_split"]),
               "augment": bool(s["augment"]), "data": d}
        if s["stop"] is not None:
            fit["stop"] = dict(s["stop"])
        meta = {"run": f"curve:{Path(start).stem}-{Path(end).stem}", "model": a["meta"].get("model"),
                "data": a["meta"].get("data"), "start": str(start), "end": str(end), "fit": fit}
        curves.fit_curve(curve, loader, epochs=s["epochs"], lr=s["lr"], momentum=s["momentum"], wd=s["weight_decay"],
                         t_per_batch=s["t_per_batch"], schedule=s["schedule"], out_dir=outd, resume=s["resume"],
                         t_sampling=s["t_sampling"], t_split=bool(s["t_split"]),
                         seed=seed, checkpoint_epochs=s["checkpoint_epochs"], meta=meta, log=log,
                         resume_every=s["resume_every"], stop=s["stop"], plateau_patience=s["plateau_patience"],
                         monitor=_stop_monitor(s, xtr, ytr, info, dev))
    publish(outd, outputs)


def _stop_monitor(s: Mapping, xtr, ytr, info: Mapping, device) -> Callable | None:
    """The curve-fitting stopping rule's measure: max training loss over its t values on the first
    ``images`` training images (unaugmented, in order, BN recomputed on them at each t)."""
    if s["stop"] is None:
        return None
    rule = s.stop_rule()
    n = int(rule["images"])
    loader = DeviceLoader(xtr[:n], ytr[:n], s["eval_batch_size"], mean=info["mean"],
                          std=info["std"], device=device, augment=False, shuffle=False, seed=0, drop_last=False)

    def monitor(curve) -> float:
        return float(landscape.evaluate_path(curve, loader, None, ts=rule["ts"])["train_loss"].max(skipna=False))
    return monitor


def evaluate_path(start: str, end: str, out: str, settings: Mapping, data: Mapping, curve: str | None = None,
                  device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> None:
    """Loss/accuracy along the fitted ``curve`` (a curve.pt) or, without one, the straight line, as a CSV."""
    s = CurveSettings.of(settings)
    label = "curve" if curve else "line"
    a, b = _endpoint(start), _endpoint(end)
    curve_diverged = bool(curve) and load_checkpoint(curve)["meta"].get("status") == "diverged"
    if a is None or b is None or curve_diverged:
        write_csv(landscape.diverged_path_table(s["points"], label), out)
        log("an endpoint (or the curve) diverged: wrote a table marked diverged")
        return
    dev = resolve_device(device)
    module = _module(a, start, dev, factories)
    if curve:
        path = curves.load_curve(curve, module, map_location=dev)
        path.check_endpoints(a["model"], b["model"], curve, start, end)
    else:
        path = curves.line(module, a["model"], b["model"])
    path.to(dev)
    tr, te = _eval_loaders(_data_block(data), dev, s["eval_train_images"], s["eval_batch_size"])
    write_csv(landscape.evaluate_path(path, tr, te, ts=s["points"], bn_batches=s["bn_batches"], log=log), out)


def evaluate_paths(start: str, curve_end: str, line_end: str, curve: str, outputs: Mapping[str, str],
                   settings: Mapping, data: Mapping, device: Any = "auto", log: Log = print,
                   factories: Sequence[str] = ()) -> None:
    """``outputs["curve"]`` and ``outputs["line"]`` of one curve instance in one job: a job's start-up
    (Python, torch, the data cache) costs about as much as one path's evaluation at demo scale.
    ``curve_end`` is the end the curve was fitted to (aligned when the curve aligns), ``line_end`` the raw one."""
    evaluate_path(start, curve_end, outputs["curve"], settings, data, curve=curve, device=device, log=log,
                  factories=factories)
    evaluate_path(start, line_end, outputs["line"], settings, data, device=device, log=log, factories=factories)


def plane(w1: str, w2: str, bend: str, out_dir: str, settings: Mapping, data: Mapping, project: Sequence[str] = (),
          labels: Sequence[str] | None = None, device: Any = "auto", log: Log = print,
          factories: Sequence[str] = ()) -> None:
    """``grid.csv`` and ``points.csv`` of the plane through w1, w2 and ``bend`` (a curve.pt: its first bend;
    or a model checkpoint), with the ``project`` checkpoints projected (labels: their file stems)."""
    s = PlaneSettings.of(settings)
    out = Path(out_dir)
    plabels = [Path(p).stem for p in project] if labels is None else list(labels)
    if len(plabels) != len(project):
        raise ConfigError(f"labels: {len(plabels)} labels for {len(project)} projected checkpoints")
    if len(set(plabels)) != len(plabels) or set(plabels) & {"w1", "w2", "bend"}:
        raise ConfigError(f"labels: labels of projected checkpoints must be unique and not w1/w2/bend: {plabels}")
    a, b, bend_ck = _endpoint(w1), _endpoint(w2), load_checkpoint(bend)
    projected = {lab: _endpoint(p) for lab, p in zip(plabels, project)}
    if (a is None or b is None or bend_ck["model"] is None or (bend_ck.get("meta") or {}).get("status") == "diverged"
            or any(v is None for v in projected.values())):
        grid, pts = landscape.diverged_plane_tables(["w1", "w2", "bend"] + plabels)
        log("an input diverged: wrote plane tables marked diverged")
    else:
        dev = resolve_device(device)
        module = _module(a, w1, dev, factories)
        theta = curves.bend_of(bend_ck, bend, module, dev)
        gp = s["grid"] if isinstance(s["grid"], int) else (tuple(s["grid"]) if len(s["grid"]) > 1 else s["grid"][0])
        tr, te = _eval_loaders(_data_block(data), dev, s["eval_train_images"], s["eval_batch_size"])
        grid, pts = landscape.plane_grid(module, a["model"], b["model"], theta, tr, te, grid_points=gp,
                                         margin=s["margin"], bn_batches=s["bn_batches"],
                                         checkpoints={k: v["model"] for k, v in projected.items()}, log=log)
    write_csv(grid, out / "grid.csv")
    write_csv(pts, out / "points.csv")
