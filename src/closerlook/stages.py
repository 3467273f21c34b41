"""One function per workflow rule: plain values in, files out.

Each script in ``scripts/`` reads ``snakemake.*`` and calls one of these inside
:func:`closerlook.jobs.job`; the command lines (``python -m closerlook.train``,
``python -m closerlook.curves fit|evaluate|plane``) are thin wrappers over them
as well. Settings are the dicts :mod:`closerlook.config` resolves (a curve's
settings, a plane's, the activation and similarity blocks); data is the
``data`` block of a run spec. A stage whose input checkpoint diverged writes
its outputs marked ``diverged`` (NaN numbers) instead of failing, so nothing
downstream crashes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from . import curves, landscape
from .data import DeviceLoader, load_split, load_subsets, probe_fingerprint, probe_set
from .devices import resolve_device
from .io import ConfigError, atomic_write_json, load_checkpoint, save_checkpoint
from .jobs import publish
from .models import model_from_checkpoint
from .tables import write_csv

Log = Callable[[str], Any]
# keys of a data block handed to the library, in the order the checkpoints record them
_DATA_KEYS = ("name", "root", "cache_dir", "train_per_class", "test_per_class", "subset_seed")


# ----------------------------------------------------------------------------- data, training

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


def train(spec: Mapping, workdir: str, outputs: Sequence[str] = (), log: Log | None = print) -> dict:
    """One training run in ``workdir`` (resumes from its resume state), then its files published onto ``outputs``."""
    from .train import train_run

    result = train_run(spec, workdir, progress=log)
    publish(workdir, outputs)
    return result


# ----------------------------------------------------------------------------- mode connectivity

def _endpoint(path: str) -> dict | None:
    """A checkpoint's weights and meta; None when the run had diverged by then."""
    ck = load_checkpoint(path)
    meta = ck.get("meta") or {}
    if ck["model"] is None or meta.get("status") == "diverged":
        return None
    return {"meta": meta, "model": ck["model"]}


def _module(ck: Mapping, path: str, device):
    return model_from_checkpoint({"meta": ck["meta"], "model": None}, path).to(device)


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


def fit_curve(start: str, end: str, out: str, settings: Mapping, data: Mapping, seed: int = 0,
              device: Any = "auto", outputs: Sequence[str] = (), log: Log = print) -> None:
    """Fit the bends of a curve between two checkpoints into ``out`` (resumable), then publish onto ``outputs``.

    ``settings``: a curve's settings (:data:`closerlook.curves.FIT_DEFAULTS` keys, e.g. ``kind``,
    ``num_bends``, ``epochs``, ``lr``, ``weight_decay``, ``batch_size``, ``t_per_batch``, ``augment``).
    """
    s = {**curves.FIT_DEFAULTS, **settings}
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
        curve = curves.Curve(_module(a, start, dev), a["model"], b["model"], kind=s["kind"],
                             num_bends=s["num_bends"]).to(dev)
        d = _data_block(data)
        xtr, ytr, _, _, info = load_subsets(d)
        loader = DeviceLoader(xtr, ytr, s["batch_size"], mean=info["mean"], std=info["std"], device=dev,
                              augment=bool(s["augment"]), shuffle=True, seed=seed, drop_last=False)
        fit = {"epochs": s["epochs"], "lr": s["lr"], "wd": s["weight_decay"], "momentum": s["momentum"],
               "batch_size": s["batch_size"], "t_per_batch": s["t_per_batch"], "schedule": s["schedule"],
               "augment": bool(s["augment"]), "data": d}
        if s["stop"] is not None:
            fit["stop"] = dict(s["stop"])
        meta = {"run": f"curve:{Path(start).stem}-{Path(end).stem}", "model": a["meta"].get("model"),
                "data": a["meta"].get("data"), "start": str(start), "end": str(end), "fit": fit}
        curves.fit_curve(curve, loader, epochs=s["epochs"], lr=s["lr"], momentum=s["momentum"], wd=s["weight_decay"],
                         t_per_batch=s["t_per_batch"], schedule=s["schedule"], out_dir=outd, resume=s["resume"],
                         seed=seed, checkpoint_epochs=s["checkpoint_epochs"], meta=meta, log=log,
                         resume_every=s["resume_every"], stop=s["stop"],
                         monitor=_stop_monitor(s, xtr, ytr, info, dev))
    publish(outd, outputs)


def _stop_monitor(s: Mapping, xtr, ytr, info: Mapping, device) -> Callable | None:
    """The curve-fitting stopping rule's measure: max training loss over its t values on the first
    ``images`` training images (unaugmented, in order, BN recomputed on them at each t)."""
    if s["stop"] is None:
        return None
    rule = {**curves.STOP_DEFAULTS, **s["stop"]}
    n = int(rule["images"])
    loader = DeviceLoader(xtr[:n], ytr[:n], s.get("eval_batch_size", landscape.EVAL_BATCH_SIZE), mean=info["mean"],
                          std=info["std"], device=device, augment=False, shuffle=False, seed=0, drop_last=False)

    def monitor(curve) -> float:
        return float(landscape.evaluate_path(curve, loader, None, ts=rule["ts"])["train_loss"].max(skipna=False))
    return monitor


def evaluate_path(start: str, end: str, out: str, settings: Mapping, data: Mapping, curve: str | None = None,
                  device: Any = "auto", log: Log = print) -> None:
    """Loss/accuracy along the fitted ``curve`` (a curve.pt) or, without one, the straight line, as a CSV."""
    s = {**landscape.PATH_DEFAULTS, **settings}
    label = "curve" if curve else "line"
    a, b = _endpoint(start), _endpoint(end)
    curve_diverged = bool(curve) and load_checkpoint(curve)["meta"].get("status") == "diverged"
    if a is None or b is None or curve_diverged:
        write_csv(landscape.diverged_path_table(s["points"], label), out)
        log("an endpoint (or the curve) diverged: wrote a table marked diverged")
        return
    dev = resolve_device(device)
    module = _module(a, start, dev)
    if curve:
        path = curves.load_curve(curve, module, map_location=dev)
        path.check_endpoints(a["model"], b["model"], curve, start, end)
    else:
        path = curves.line(module, a["model"], b["model"])
    path.to(dev)
    tr, te = _eval_loaders(_data_block(data), dev, s["eval_train_images"], s["eval_batch_size"])
    write_csv(landscape.evaluate_path(path, tr, te, ts=s["points"], bn_batches=s["bn_batches"], log=log), out)


def plane(w1: str, w2: str, bend: str, out_dir: str, settings: Mapping, data: Mapping, project: Sequence[str] = (),
          labels: Sequence[str] | None = None, device: Any = "auto", log: Log = print) -> None:
    """``grid.csv`` and ``points.csv`` of the plane through w1, w2 and ``bend`` (a curve.pt: its first bend;
    or a model checkpoint), with the ``project`` checkpoints projected (labels: their file stems)."""
    s = {**landscape.PLANE_DEFAULTS, **settings}
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
        module = _module(a, w1, dev)
        theta = curves.bend_of(bend_ck, bend, module, dev)
        gp = s["grid"] if isinstance(s["grid"], int) else (tuple(s["grid"]) if len(s["grid"]) > 1 else s["grid"][0])
        tr, te = _eval_loaders(_data_block(data), dev, s["eval_train_images"], s["eval_batch_size"])
        grid, pts = landscape.plane_grid(module, a["model"], b["model"], theta, tr, te, grid_points=gp,
                                         margin=s["margin"], bn_batches=s["bn_batches"],
                                         checkpoints={k: v["model"] for k, v in projected.items()}, log=log)
    write_csv(grid, out / "grid.csv")
    write_csv(pts, out / "points.csv")


# ----------------------------------------------------------------------------- representations, reports

def extract_activations(ckpt: str, out: str, settings: Mapping, data: Mapping, probe_size: int,
                        device: Any = "auto") -> None:
    """Every analysis layer of one checkpoint on the probe set (first ``probe_size`` training images)."""
    from .activations import capture_to_store, save_store
    from .models import analysis_layers

    ck = load_checkpoint(ckpt)
    meta = {"checkpoint": str(ckpt), "status": ck["meta"].get("status", "ok")}
    if ck["model"] is None:  # the run diverged before this checkpoint
        save_store(out, {}, dict(meta, status="diverged"))
        return
    dev = resolve_device(device)
    model = model_from_checkpoint(ck, ckpt).to(dev)
    xtr, _, _, _, info = load_subsets(dict(data))
    capture_to_store(model, analysis_layers(model), probe_set(xtr, probe_size), out, meta=meta,
                     batch_size=settings["batch_size"], mean=info["mean"], std=info["std"], mode=settings["mode"],
                     subsample=settings["subsample"], device=dev)


def similarity(store_a: str, store_b: str, out: str, settings: Mapping, labels: tuple[str, str] = ("a", "b")) -> list[dict]:
    """The per-layer similarity table between two activation stores (layer i against layer i).

    ``settings``: ``{"measures": [...], "chance": bool}``. Conv activations stored in full
    ``(N, C, H, W)`` go as they are to the spatial measures (DFT-CCA) and spatially averaged to
    the others. A store from a diverged checkpoint gives rows with NaN and ``status = diverged``.
    """
    from .activations import load_store
    from .similarity import layer_rows
    from .tables import SIMILARITY_COLUMNS

    measures = list(settings.get("measures", ["cca_mean98"]))
    acts_a, meta_a = load_store(store_a)
    acts_b, meta_b = load_store(store_b)
    if "diverged" in (meta_a.get("status"), meta_b.get("status")):
        nan = float("nan")
        rows = [{"layer": "", "layer_index": -1, "measure": m, "value": nan, "chance": nan, "status": "diverged"}
                for m in measures]
    else:
        rows = [dict(r, status="ok") for r in layer_rows(acts_a, acts_b, measures, chance=bool(settings.get("chance", True)))]
    for r in rows:
        r["a"], r["b"] = labels
    df = pd.DataFrame(rows, columns=SIMILARITY_COLUMNS).sort_values(["layer_index", "measure"], kind="stable")
    write_csv(df, out)
    return rows


def figure(name: str, layout: Mapping, options: Mapping, outputs: Sequence[str]) -> None:
    from .figures import make_figure

    make_figure(name, layout, options, list(outputs))


def claims(layouts: Mapping, rules: Mapping, json_path: str, md_path: str) -> dict:
    from .claims import evaluate, write_reports

    result = evaluate(layouts, rules)
    write_reports(result, json_path, md_path)
    return result
