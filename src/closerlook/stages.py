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

import numpy as np
import pandas as pd
import torch

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


def train(spec: Mapping, workdir: str, outputs: Sequence[str] = (), log: Log | None = print,
          factories: Sequence[str] = ()) -> dict:
    """One training run in ``workdir`` (resumes from its resume state), then its files published onto ``outputs``.

    ``factories`` (here and below): the external model factories the config names, the only ones a
    checkpoint's model spec may make this job import (:func:`closerlook.models.model_from_checkpoint`)."""
    from .train import train_run

    result = train_run(spec, workdir, progress=log, factories=factories)
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


def fit_curve(start: str, end: str, out: str, settings: Mapping, data: Mapping, seed: int = 0,
              device: Any = "auto", outputs: Sequence[str] = (), log: Log = print,
                                                              factories: Sequence[str] = ()) -> None:
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
        curve = curves.Curve(_module(a, start, dev, factories), a["model"], b["model"], kind=s["kind"],
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
                  device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> None:
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
        module = _module(a, w1, dev, factories)
        theta = curves.bend_of(bend_ck, bend, module, dev)
        gp = s["grid"] if isinstance(s["grid"], int) else (tuple(s["grid"]) if len(s["grid"]) > 1 else s["grid"][0])
        tr, te = _eval_loaders(_data_block(data), dev, s["eval_train_images"], s["eval_batch_size"])
        grid, pts = landscape.plane_grid(module, a["model"], b["model"], theta, tr, te, grid_points=gp,
                                         margin=s["margin"], bn_batches=s["bn_batches"],
                                         checkpoints={k: v["model"] for k, v in projected.items()}, log=log)
    write_csv(grid, out / "grid.csv")
    write_csv(pts, out / "points.csv")


# ----------------------------------------------------------------------------- lenses, sharpness

def _diverged_table(columns: Sequence[str], **fixed) -> pd.DataFrame:
    row = {c: float("nan") for c in columns}
    row.update(fixed, status="diverged")
    return pd.DataFrame([row], columns=list(columns) + ([] if "status" in columns else ["status"]))


def _state_on(ck: Mapping, dev) -> dict:
    return {k: v.to(dev) for k, v in ck["model"].items()}


def lens_slices(ckpt: str, out_1d: str, out_2d: str, settings: Mapping, data: Mapping, device: Any = "auto",
                log: Log = print, factories: Sequence[str] = ()) -> None:
    """The 1-D and 2-D filter-normalised slices around one checkpoint (:func:`closerlook.lenses.random_slices`)."""
    from . import lenses
    from .tables import GRID_COLUMNS, SLICE_COLUMNS

    s = {**lenses.LENS_DEFAULTS, **settings}
    ck = _endpoint(ckpt)
    if ck is None:
        write_csv(_diverged_table(SLICE_COLUMNS), out_1d)
        write_csv(_diverged_table(GRID_COLUMNS), out_2d)
        log("the checkpoint diverged: wrote slices marked diverged")
        return
    dev = resolve_device(device)
    module = _module(ck, ckpt, dev, factories)
    tr, te = _eval_loaders(_data_block(data), dev, s["eval_train_images"], s["eval_batch_size"])
    d1, d2 = lenses.random_slices(module, _state_on(ck, dev), tr, te, seed=int(s["seed"]), points=int(s["points"]),
                                  grid=list(s["grid"]), span=float(s["span"]), bn_batches=s["bn_batches"], log=log)
    write_csv(d1, out_1d)
    write_csv(d2, out_2d)


def _trajectory_views(module, dev, w1: str, w2: str, bend_ck: Mapping, curve: str, seed: int) -> dict:
    """Each comparison view's directions: the line, the Fig. 3 curve plane, the random slices at w1 and w2."""
    from .curves import Layout
    from .lenses import filter_normalised_direction

    lay = Layout(module)
    a, b = _state_on(_endpoint(w1), dev), _state_on(_endpoint(w2), dev)
    pa, pb = lay.flat_params(a, torch.float64), lay.flat_params(b, torch.float64)
    bend = lay.flat_params(curves.bend_of(bend_ck, curve, module, dev), torch.float64)
    views = {"straight line w1-w2": [pb - pa], "curve plane (Fig. 3)": [pb - pa, bend - pa]}
    for end, st in (("w1", a), ("w2", b)):
        d0, d1 = (filter_normalised_direction(module, st, seed + i) for i in (0, 1))
        views[f"random 1-D at {end}"] = [d0]
        views[f"random 2-D at {end}"] = [d0, d1]
    return views


def lens_trajectory(ckpts: Sequence[str], w1: str, w2: str, curve: str, out_dir: str, settings: Mapping,
                    device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> None:
    """PCA (streamed Gram, origin = the LAST checkpoint) and t-SNE of a run's checkpoints, and the share of the
    trajectory's variance each view keeps: ``pca.csv``, ``trajectory.csv``, ``views.csv``, ``components.pt``."""
    from . import lenses
    from .curves import Layout
    from .io import atomic_torch_save
    from .tables import PCA_COLUMNS, TRAJECTORY_COLUMNS, VIEW_COLUMNS

    s = {**lenses.LENS_DEFAULTS, **settings}
    out = Path(out_dir)
    metas = []
    for p in ckpts:  # one checkpoint in memory at a time: only the meta is kept
        ck = load_checkpoint(p)
        metas.append(None if ck["model"] is None else ck["meta"])
    bend_ck = load_checkpoint(curve)
    if any(m is None for m in metas) or _endpoint(w1) is None or _endpoint(w2) is None or bend_ck["model"] is None:
        for name, cols in (("pca", PCA_COLUMNS), ("trajectory", TRAJECTORY_COLUMNS), ("views", VIEW_COLUMNS)):
            write_csv(_diverged_table(cols), out / f"{name}.csv")
        atomic_torch_save({"components": None, "status": "diverged"}, out / "components.pt")
        log("a checkpoint of the trajectory (or the pair) diverged: wrote tables marked diverged")
        return
    by_iter = {}
    for i, m in enumerate(metas):  # one row per iteration: the final wins over the last epoch's copy of it
        by_iter[m.get("iteration", i)] = i
    keep = [by_iter[k] for k in sorted(by_iter)]  # in training order; the final (the origin) last
    files = [ckpts[i] for i in keep]
    dev = resolve_device(device)
    module = _module({"meta": metas[-1]}, ckpts[-1], dev, factories)
    lay = Layout(module)
    load = lambda i: lay.flat_params(load_checkpoint(files[i], map_location=dev)["model"], torch.float64)  # noqa: E731
    n, origin = len(files), load(len(files) - 1)
    pca = lenses.pca_from_gram(lenses.trajectory_gram(load, n, origin, s["memory_mb"]), s["center"])
    comps = lenses.pca_components(load, n, origin, pca, k=2)
    views = {**_trajectory_views(module, dev, w1, w2, bend_ck, curve, int(s["seed"])), "PCA plane (top 2)": list(comps)}
    shares = lenses.variance_shares(load, n, origin, views, total=pca.total, center=s["center"])
    tsne = lenses.tsne_coords(pca.gram, s["perplexity"], s["tsne_seed"])
    explained = ", ".join(f"{e:.3f}" for e in pca.explained[:3])
    why = "drawn" if tsne is not None else f"skipped (perplexity {s['perplexity']} >= N / 3)"
    log(f"{n} checkpoints, explained variance of the first axes {explained}; t-SNE {why}")
    labels = [Path(f).stem for f in files]
    traj = pd.DataFrame({"label": labels, "iteration": [metas[i].get("iteration") for i in keep],
                         "pc1": pca.coords[:, 0], "pc2": pca.coords[:, 1] if n > 1 else 0.0,
                         "tsne1": tsne[:, 0] if tsne is not None else float("nan"),
                         "tsne2": tsne[:, 1] if tsne is not None else float("nan")}, columns=TRAJECTORY_COLUMNS)
    write_csv(pd.DataFrame({"axis": range(1, n + 1), "eigenvalue": pca.eigenvalues, "explained": pca.explained},
                           columns=PCA_COLUMNS), out / "pca.csv")
    write_csv(traj, out / "trajectory.csv")
    write_csv(pd.DataFrame([{"view": v, "dims": len(views[v]), "variance_share": shares[v]} for v in views],
                           columns=VIEW_COLUMNS), out / "views.csv")
    atomic_torch_save({"components": comps.float().cpu(), "labels": labels, "center": s["center"], "status": "ok"},
                      out / "components.pt")


def lens_pca_grid(origin_ckpt: str, components: str, trajectory: str, out: str, settings: Mapping, data: Mapping,
                  device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> None:
    """The loss surface on the top-2 PCA plane through the trajectory's last checkpoint (BN recomputed per point)."""
    from . import lenses
    from .curves import Layout
    from .io import safe_torch_load
    from .tables import GRID_COLUMNS

    s = {**lenses.LENS_DEFAULTS, **settings}
    comp = safe_torch_load(components)
    ck = _endpoint(origin_ckpt)
    if ck is None or comp.get("components") is None:
        write_csv(_diverged_table(GRID_COLUMNS), out)
        log("the trajectory diverged: wrote a grid marked diverged")
        return
    xy = pd.read_csv(trajectory)[["pc1", "pc2"]].to_numpy(dtype=float)
    coords = lenses.pca_grid_coords(xy, list(s["pca_grid"]), float(s["margin"]))
    dev = resolve_device(device)
    module = _module(ck, origin_ckpt, dev, factories)
    state = _state_on(ck, dev)
    tr, te = _eval_loaders(_data_block(data), dev, s["eval_train_images"], s["eval_batch_size"])
    origin = Layout(module).flat_params(state, torch.float64)
    axes = [c.to(dev, torch.float64) for c in comp["components"]]
    rows = landscape.surface_metrics(module, state, origin, axes, coords, tr, te, bn_batches=s["bn_batches"], log=log)
    write_csv(pd.DataFrame([{"u": u, "v": v, **m} for (u, v), m in zip(coords, rows)], columns=GRID_COLUMNS), out)


def _sharpness_rows(module, states, labels, ts, settings, data, dev, log) -> pd.DataFrame:
    from .sharpness import sharpness_at, subset_batches
    from .tables import SHARPNESS_COLUMNS

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
    from .sharpness import SHARPNESS_DEFAULTS
    from .tables import SHARPNESS_COLUMNS

    s = {**SHARPNESS_DEFAULTS, **settings}
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
    from .sharpness import SHARPNESS_DEFAULTS
    from .tables import SHARPNESS_COLUMNS

    s = {**SHARPNESS_DEFAULTS, **settings}
    ck = _endpoint(ckpt)
    if ck is None:
        write_csv(_diverged_table(SHARPNESS_COLUMNS, label=label), out)
        log("the checkpoint diverged: wrote a row marked diverged")
        return
    dev = resolve_device(device)
    module = _module(ck, ckpt, dev, factories)
    write_csv(_sharpness_rows(module, [lambda: _state_on(ck, dev)], [label], [float("nan")], s, data, dev, log), out)


# ----------------------------------------------------------------------------- representations, reports

def extract_activations(ckpt: str, out: str, settings: Mapping, data: Mapping, probe_size: int,
                        device: Any = "auto", factories: Sequence[str] = ()) -> None:
    """Every analysis layer of one checkpoint on the probe set (first ``probe_size`` training images)."""
    from .activations import capture_to_store, save_store
    from .models import analysis_layers

    ck = load_checkpoint(ckpt)
    meta = {"checkpoint": str(ckpt), "status": ck["meta"].get("status", "ok")}
    if ck["model"] is None:  # the run diverged before this checkpoint
        save_store(out, {}, dict(meta, status="diverged"))
        return
    dev = resolve_device(device)
    model = model_from_checkpoint(ck, ckpt, allow=factories).to(dev)
    xtr, _, _, _, info = load_subsets(dict(data))
    capture_to_store(model, analysis_layers(model), probe_set(xtr, probe_size), out, meta=meta,
                     batch_size=settings["batch_size"], mean=info["mean"], std=info["std"], mode=settings["mode"],
                     subsample=settings["subsample"], device=dev)


def similarity(store_a: str, store_b: str, out: str, settings: Mapping, labels: tuple[str, str] = ("a", "b")) -> list[dict]:
    """The per-layer similarity table between two activation stores (layer i against layer i).

    ``settings``: ``{"measures": [...], "chance": bool, "chance_shuffles": K, "subsamples": {"count", "size"}}``
    (defaults :data:`closerlook.similarity.COMPARISON_DEFAULTS`). Conv activations stored in full
    ``(N, C, H, W)`` go as they are to the spatial measures (DFT-CCA) and spatially averaged to
    the others. A store from a diverged checkpoint gives rows with NaN and ``status = diverged``.
    """
    from .activations import load_store
    from .similarity import COMPARISON_DEFAULTS, layer_rows
    from .tables import SIMILARITY_COLUMNS

    s = {**COMPARISON_DEFAULTS, **settings}
    measures = list(s["measures"])
    acts_a, meta_a = load_store(store_a)
    acts_b, meta_b = load_store(store_b)
    if "diverged" in (meta_a.get("status"), meta_b.get("status")):
        rows = [{"layer": "", "layer_index": -1, "measure": m, "sample": "all", "status": "diverged"} for m in measures]
    else:
        rows = [dict(r, status="ok") for r in layer_rows(acts_a, acts_b, measures, chance=bool(s["chance"]),
                                                         n_shuffles=int(s["chance_shuffles"]),
                                                         subsamples=s.get("subsamples"))]
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


# ----------------------------------------------------------------------------- alignment, AutoNEB, ensembles

def align_end(start: str, end: str, out: str, settings: Mapping, log: Log = print,
              factories: Sequence[str] = ()) -> None:
    """``end``'s weights permuted to match ``start`` (weight matching), saved as a checkpoint with ``end``'s meta
    plus the L2 distances to ``start`` before and after, and the seconds it took."""
    import time

    from . import align

    a, b = _endpoint(start), _endpoint(end)
    if a is None or b is None:
        save_checkpoint(out, None, {"status": "diverged", "aligned_to": str(start), "aligned_from": str(end)})
        log("an endpoint diverged: wrote the aligned end marked diverged")
        return
    module = _module(a, start, "cpu", factories)
    t0 = time.perf_counter()
    aligned = align.align(module, a["model"], b["model"], settings)
    seconds = time.perf_counter() - t0
    lay = curves.Layout(module)
    ref = lay.flat_params(a["model"], dtype=torch.float64)
    dist = lambda sd: float((lay.flat_params(sd, dtype=torch.float64) - ref).norm())  # noqa: E731
    meta = {**b["meta"], "aligned_to": str(start), "aligned_from": str(end), "align": dict(settings),
            "distance_before": dist(b["model"]), "distance_after": dist(aligned), "align_s": seconds}
    save_checkpoint(out, aligned, meta)
    log(f"aligned {end} to {start} in {seconds:.1f}s: L2 distance {meta['distance_before']:.3f} -> {meta['distance_after']:.3f}")


def evaluate_aligned(start: str, aligned_end: str, outputs: Mapping[str, str], settings: Mapping, align_settings: Mapping,
                     data: Mapping, device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> None:
    """Per output kind: the straight line from ``start`` to the aligned end (``"aligned"``) or the same line
    REPAIRed (``"repaired"``, networks without BN; statistics from the first ``repair_images`` training images)."""
    from . import align

    s = {**landscape.PATH_DEFAULTS, **settings}
    a, b = _endpoint(start), _endpoint(aligned_end)
    if a is None or b is None:
        for kind, out in outputs.items():
            write_csv(landscape.diverged_path_table(s["points"], kind), out)
        log("an endpoint diverged: wrote tables marked diverged")
        return
    dev = resolve_device(device)
    module = _module(a, start, dev, factories)
    d = _data_block(data)
    tr, te = _eval_loaders(d, dev, s["eval_train_images"], s["eval_batch_size"])
    ts = landscape.path_points(s["points"])
    sa, sb = ({k: v.to(dev) for k, v in e["model"].items()} for e in (a, b))
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if "repaired" in outputs and has_bn:
        raise ConfigError(f"{aligned_end}: REPAIR is for networks without BN (recomputing BN statistics already "
                          "resets them); the aligned line is the corrected one")
    for kind, out in outputs.items():
        rep = _eval_loaders(d, dev, align_settings["repair_images"], s["eval_batch_size"])[0] if kind == "repaired" else None
        write_csv(align.evaluate_line(module, sa, sb, tr, te, ts, repair_loader=rep, label=kind, log=log), out)


def autoneb(start: str, end: str, outputs: Mapping[str, str], settings: Mapping, eval_settings: Mapping, data: Mapping,
            device: Any = "auto", log: Log = print, factories: Sequence[str] = ()) -> None:
    """AutoNEB between two checkpoints: ``outputs["pivots"]`` (autoneb.pt), ``["metrics"]`` (one row per cycle)
    and ``["table"]`` (autoneb.csv: the chain evaluated like a curve, BN recomputed at each t)."""
    from . import autoneb as neb

    s = neb.check_settings(settings)
    ev = {**landscape.PATH_DEFAULTS, **eval_settings}
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


def _train_loader(data: Mapping, training: Mapping, dev):
    xtr, ytr, _, _, info = load_subsets(_data_block(data))
    kw = dict(mean=info["mean"], std=info["std"], device=dev, seed=int(training["seed"]))
    return (DeviceLoader(xtr, ytr, int(training["batch_size"]), augment=bool(training["augment"]), shuffle=True,
                         drop_last=True, **kw),
            DeviceLoader(xtr, ytr, 500, augment=False, shuffle=False, drop_last=False, **kw))


def _from_base(base: str, outputs: Sequence[str], training: Mapping, data: Mapping, device: Any, what: str,
               factories: Sequence[str] = ()):
    """(base checkpoint, its model, training loader, BN loader, iterations) for FGE / SWA; None (outputs
    written marked diverged) when the base run had diverged."""
    b = _endpoint(base)
    if b is None:
        for out in outputs:
            save_checkpoint(out, None, {"status": "diverged", f"{what}_base": str(base)})
        return None
    dev = resolve_device(device)
    model = model_from_checkpoint(load_checkpoint(base), base, allow=factories).to(dev)
    loader, bn_loader = _train_loader(data, training, dev)
    return b, model, loader, bn_loader, int(training["budget_epochs"]) * len(loader)


def fge(base: str, outputs: Sequence[str], training: Mapping, data: Mapping, device: Any = "auto", log: Log = print,
        factories: Sequence[str] = ()) -> None:
    """Fast geometric ensembling from ``base``: one member checkpoint per output (Garipov's cyclic lr)."""
    from . import ensembles as ens

    got = _from_base(base, outputs, training, data, device, "fge", factories)
    if got is None:
        return
    b, model, loader, _, total = got
    members = ens.train_fge(model, loader, training["optimizer"], total, len(outputs), float(training["lr_max"]),
                            float(training["lr_min"]), log=log)
    for k, (out, st) in enumerate(zip(outputs, members)):
        save_checkpoint(out, st, {**b["meta"], "run": f"fge:{b['meta'].get('run')}", "fge_base": str(base),
                                  "fge_member": k, "status": "ok"})


def swa(base: str, out: str, training: Mapping, data: Mapping, device: Any = "auto", log: Log = print,
        factories: Sequence[str] = ()) -> None:
    """SWA weights from ``base`` over the same extra budget as FGE (torch.optim.swa_utils), BN recomputed."""
    from . import ensembles as ens

    got = _from_base(base, [out], training, data, device, "swa", factories)
    if got is None:
        return
    b, model, loader, bn_loader, total = got
    state, n = ens.train_swa(model, loader, bn_loader, training["optimizer"], total, int(training["members"]),
                             float(training["swa_lr"]), log=log)
    save_checkpoint(out, state, {**b["meta"], "run": f"swa:{b['meta'].get('run')}", "swa_base": str(base),
                                 "swa_averaged": n, "status": "ok"})


def _curve_members(curve: Mapping, dev, factories: Sequence[str] = ()) -> list[tuple[str, dict | None]]:
    a, b = _endpoint(curve["start"]), _endpoint(curve["end"])
    ck = load_checkpoint(curve["curve"])
    if a is None or b is None or ck["model"] is None:
        return [(f"t={t:.3f}", None) for t in curve["ts"]]
    c = curves.load_curve(curve["curve"], _module(a, curve["start"], dev, factories), map_location=dev)
    c.check_endpoints(a["model"], b["model"], curve["curve"], curve["start"], curve["end"])
    with torch.no_grad():
        return [(f"t={t:.3f}", {k: v.detach().clone() for k, v in c.weights_at(t).items()}) for t in curve["ts"]]


def ensembles(members: Mapping[str, Sequence[str]], curve: Mapping, budgets: Mapping, settings: Mapping, data: Mapping,
              outputs: Mapping[str, str], device: Any = "auto", log: Log = print,
                  factories: Sequence[str] = ()) -> None:
    """``outputs["ensembles"]`` and ``["members"]``: accuracy, NLL and diversity of every ensemble.

    ``members``: method -> member checkpoints (SWA: its one network); ``curve``: ``{"curve", "start", "end", "ts"}``."""
    from . import ensembles as ens

    dev = resolve_device(device)
    loaded = {m: [(Path(p).stem, _endpoint(p)) for p in ps] for m, ps in members.items()}
    first = next(e for es in loaded.values() for _l, e in es if e is not None)
    module = model_from_checkpoint({"meta": first["meta"], "model": None}, allow=factories).to(dev)
    states = {m: [(lab, None if e is None else e["model"]) for lab, e in es] for m, es in loaded.items()}
    states["curve"] = _curve_members(curve, dev, factories)
    swa_meta = (loaded.get("swa") or [(None, None)])[0][1]
    snaps = {"swa": int(swa_meta["meta"].get("swa_averaged", 1))} if swa_meta else {}
    d = _data_block(data)
    bn_loader, test_loader = _eval_loaders(d, dev, None, int(settings["eval_batch_size"]))
    order = [m for m in ens.METHODS if m in states]
    ens_df, mem_df = ens.evaluate_ensembles(module, {m: states[m] for m in order}, budgets, test_loader, bn_loader,
                                            settings, device=dev, snapshots=snaps, log=log)
    write_csv(ens_df, outputs["ensembles"])
    write_csv(mem_df, outputs["members"])
