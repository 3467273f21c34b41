"""Rules of workflow/rules/lenses.smk: filter-normalised slices, the trajectory's PCA / t-SNE, the PCA-plane grid."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from .. import curves, landscape
from ..curves import Layout
from ..devices import resolve_device
from ..io import atomic_torch_save, load_checkpoint, safe_torch_load
from ..tables import GRID_COLUMNS, PCA_COLUMNS, SLICE_COLUMNS, TRAJECTORY_COLUMNS, VIEW_COLUMNS, write_csv
from ._common import Log, _endpoint, _module, _data_block, _eval_loaders, _diverged_table, _state_on
from ..settings_types import LensSettings


def lens_slices(ckpt: str, out_1d: str, out_2d: str, settings: Mapping, data: Mapping, device: Any = "auto",
                log: Log = print, factories: Sequence[str] = ()) -> None:
    """The 1-D and 2-D filter-normalised slices around one checkpoint (:func:`closerlook.lenses.random_slices`)."""
    from .. import lenses

    s = LensSettings.of(settings)
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
    from ..lenses import filter_normalised_direction

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
    from .. import lenses

    s = LensSettings.of(settings)
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
    from .. import lenses

    s = LensSettings.of(settings)
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
