"""Scale probe for the premise of claims 1-3: is there a barrier on the straight line between SGDR iterates?

One SGDR run (``closerlook.train.train_run``, checkpoints at the cycle ends), optionally a second
seed of the same recipe (the two-seed positive control: final vs final), then:

- the straight line between chosen checkpoint pairs, ``--points`` equally spaced t;
- optionally a quadratic Bezier curve fitted between chosen pairs (``closerlook.curves.fit_curve``,
  Garipov's recipe), with a curve checkpoint after every fitting epoch, each evaluated at a few
  fixed t (``--curve-ts``): how the curve's max train loss converges with fitting epochs.

Every path is measured on a FIXED, STRATIFIED, UNAUGMENTED subset of the training subset
(``--eval-per-class`` images of each class, drawn with seed 123), in eval mode, BN statistics
recomputed on that subset at every point (``closerlook.landscape.evaluate_path``). Stratified:
exactly ``--eval-per-class`` images of every class, drawn independently of the stored order (the
probes of docs/SCALE-STUDY.md ran when ``cifar10_jpeg`` was stored sorted by class, where "the
first N images" would have been one or two classes; it is now stored class-mixed, but the
training subset it draws from, and so every probe number, depends on that order).

Barrier = max_t loss(t) - max(loss(0), loss(1)) (the definition of ``closerlook.claims``).
Times: wall seconds and this process's CPU seconds (the machine is shared; single-threaded CPU
seconds approximate the wall time of an idle core).

Usage (from the repository root, ``PYTHONPATH=src``)::

    python -m bench.scale_probe --name NAME [--data cifar10_jpeg --per-class 250 --width 0.5 --bn 1
        --lr 0.2 --T0 8 --Tmult 1 --epochs 24 --pairs 8-16,16-24 --seeds 0,1 --curve-pairs 8-16 ...]

Pair tags: an epoch number (a checkpoint of the first seed) or ``sN`` (seed N's final weights).
Writes ``OUT/NAME/result.json`` (OUT = ``--out``, default ``results/scale``) and prints one
``LINE`` / ``CURVE`` / ``CONV`` line per measurement.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from closerlook import curves, landscape
from closerlook.data import DeviceLoader, load_subsets, stratified_subset
from closerlook.io import load_checkpoint
from closerlook.models import model_from_checkpoint
from closerlook.train import train_run

EVAL_SUBSET_SEED = 123  # the fixed stratified evaluation subset (any fixed seed; recorded in result.json)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--name", required=True)
    a("--out", default="results/scale")
    a("--data", default="cifar10_jpeg")
    a("--cache-dir", default="resources/data")
    a("--per-class", type=int, default=250, help="training images per class")
    a("--test-per-class", type=int, default=100)
    a("--model", default="small_cnn")
    a("--width", type=float, default=1.0)
    a("--bn", type=int, default=0)
    a("--init", default="kaiming")
    a("--dropout", type=float, default=None)
    a("--lr", type=float, default=0.05, help="SGDR restart (maximum) learning rate")
    a("--lr-min", type=float, default=1e-6)
    a("--wd", type=float, default=5e-4)
    a("--T0", type=int, default=2)
    a("--Tmult", type=int, default=2)
    a("--epochs", type=int, default=14)
    a("--batch", type=int, default=50)
    a("--aug", type=int, default=0)
    a("--seeds", default="0", help="comma list; a second seed adds the two-seed control pair")
    a("--pairs", default="", help="e.g. 2-6,6-14 (default: consecutive cycle ends)")
    a("--points", type=int, default=9)
    a("--eval-per-class", type=int, default=100)
    a("--curve-pairs", default="", help="pairs to fit a Bezier curve for, e.g. 8-16,s0-s1")
    a("--curve-epochs", type=int, default=3)
    a("--curve-lr", type=float, default=0.015)
    a("--curve-ts", default="0.25,0.5,0.75", help="fixed t for the convergence table")
    a("--train-only", type=int, default=0)
    return p.parse_args(argv)


def sgdr_cycle_ends(T0: int, Tmult: int, epochs: int) -> list[int]:
    """Epochs at which SGDR cycles end (lr at its minimum): T0, T0 + T0*Tmult, ... up to ``epochs``."""
    ends, length, e = [], T0, T0
    while e <= epochs:
        ends.append(e)
        length *= Tmult
        e += length
    return ends


class Timer:
    def __init__(self):
        self.w, self.c = time.time(), time.process_time()

    def read(self) -> dict:
        return {"wall_s": round(time.time() - self.w, 1), "cpu_s": round(time.process_time() - self.c, 1)}


def _specs(a) -> tuple[dict, dict, list[int], list[tuple[str, str]]]:
    ends = sgdr_cycle_ends(a.T0, a.Tmult, a.epochs)
    pairs = [tuple(s.split("-")) for s in a.pairs.split(",") if s] or \
        [(str(x), str(y)) for x, y in zip(ends[:-1], ends[1:])]
    data = {"name": a.data, "cache_dir": a.cache_dir, "train_per_class": a.per_class,
            "test_per_class": a.test_per_class, "subset_seed": 0}
    model = {"name": a.model, "batch_norm": bool(a.bn), "init": a.init, "width": a.width}
    if a.dropout is not None:
        model["dropout"] = a.dropout
    epochs_needed = {int(x) for pr in pairs for x in pr if not x.startswith("s")}
    spec = {"name": a.name, "data": data, "model": model,
            "optimizer": {"name": "sgd", "lr": a.lr, "momentum": 0.9, "weight_decay": a.wd},
            "schedule": {"name": "sgdr", "T0": a.T0, "Tmult": a.Tmult, "lr_min": a.lr_min},
            "epochs": a.epochs, "batch_size": a.batch, "augment": bool(a.aug), "channels_last": True,
            "checkpoints": {"epochs": sorted(set(ends) | epochs_needed)}, "threads": 1, "device": "cpu"}
    return spec, data, ends, pairs


def _train(spec: dict, seeds: list[int], root: Path) -> dict:
    runs = {}
    for s in seeds:
        t = Timer()
        r = train_run({**spec, "seed": s}, root / f"seed{s}", progress=lambda m: print(m, flush=True))
        runs[s] = {**{k: r.get(k) for k in ("status", "train_loss", "train_acc", "test_loss", "test_acc")}, **t.read()}
        print(f"RUN seed {s}: {runs[s]}", flush=True)
    return runs


def _summary(df) -> dict:
    loss = [float(v) for v in df["train_loss"]]
    return {"t": [float(v) for v in df["t"]], "loss": loss, "acc": [float(v) for v in df["train_acc"]],
            "barrier": max(loss) - max(loss[0], loss[-1])}


def _fmt(loss: list[float]) -> str:
    return "[" + " ".join(f"{v:.3f}" for v in loss) + "]"


class Endpoints:
    def __init__(self, root: Path, first_seed: int):
        self.root, self.first = root, first_seed

    def path(self, tag: str) -> Path:
        if tag.startswith("s"):
            return self.root / f"seed{int(tag[1:])}" / "final.pt"
        return self.root / f"seed{self.first}" / f"epoch{tag}.pt"

    def load(self, ta: str, tb: str):
        A, B = load_checkpoint(self.path(ta)), load_checkpoint(self.path(tb))
        module = model_from_checkpoint({"meta": A["meta"], "model": None}, str(self.path(ta)))
        return module, A["model"], B["model"]


def _lines(name, ep: Endpoints, pairs, ev, points) -> dict:
    out = {}
    for ta, tb in pairs:
        t = Timer()
        module, A, B = ep.load(ta, tb)
        line = curves.line(module, A, B)
        s = _summary(landscape.evaluate_path(line, ev, None, ts=points))
        s.update(l2=float((line.end_params - line.start_params).norm()), **t.read())
        out[f"{ta}-{tb}"] = s
        print(f"LINE {name} {ta}-{tb}: ends {s['loss'][0]:.3f}/{s['loss'][-1]:.3f} max {max(s['loss']):.3f} "
              f"barrier {s['barrier']:+.3f} l2 {s['l2']:.2f} loss {_fmt(s['loss'])}", flush=True)
    return out


def _curve(name, a, ep: Endpoints, cp: str, data: dict, ev) -> dict:
    ta, tb = cp.split("-")
    module, A, B = ep.load(ta, tb)
    xtr, ytr, _, _, info = load_subsets(data)
    loader = DeviceLoader(xtr, ytr, a.batch, mean=info["mean"], std=info["std"], device="cpu",
                          augment=False, shuffle=True, seed=0)
    cdir = ep.root / f"curve-{cp}"
    t = Timer()
    curves.fit_curve(curves.Curve(module, A, B, kind="bezier", num_bends=3), loader, epochs=a.curve_epochs,
                     lr=a.curve_lr, out_dir=cdir, seed=0, checkpoint_epochs=list(range(1, a.curve_epochs + 1)),
                     log=lambda m: print(m, flush=True))
    fit_time = t.read()
    ts = [float(v) for v in a.curve_ts.split(",")]
    conv = []
    for e in range(1, a.curve_epochs + 1):
        f = cdir / f"curve_epoch{e}.pt"
        df = landscape.evaluate_path(curves.load_curve(f if f.exists() else cdir / "curve.pt", module), ev, None, ts=ts)
        conv.append({"epoch": e, "ts": ts, "loss": [float(v) for v in df["train_loss"]],
                     "max_loss": float(df["train_loss"].max())})
        print(f"CONV {name} {cp} epoch {e}: max train loss over t={ts}: {conv[-1]['max_loss']:.4f}", flush=True)
    s = _summary(landscape.evaluate_path(curves.load_curve(cdir / "curve.pt", module), ev, None, ts=a.points))
    s.update(fit=fit_time, convergence=conv, epochs=a.curve_epochs, lr=a.curve_lr)
    print(f"CURVE {name} {cp}: ends {s['loss'][0]:.3f}/{s['loss'][-1]:.3f} max {max(s['loss']):.3f} "
          f"excess {s['barrier']:+.3f} fit {fit_time} loss {_fmt(s['loss'])}", flush=True)
    return s


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(1)
    spec, data, ends, pairs = _specs(a)
    seeds = [int(s) for s in a.seeds.split(",")]
    root = Path(a.out) / a.name
    res = {"args": vars(a), "cycle_ends": ends, "eval_subset_seed": EVAL_SUBSET_SEED,
           "runs": _train(spec, seeds, root), "lines": {}, "curves": {}}
    if not a.train_only:
        xtr, ytr, _, _, info = load_subsets(data)
        idx = stratified_subset(ytr, a.eval_per_class, EVAL_SUBSET_SEED)
        ev = DeviceLoader(xtr[idx], ytr[idx], 500, mean=info["mean"], std=info["std"], device="cpu",
                          augment=False, shuffle=False, seed=0)
        ep = Endpoints(root, seeds[0])
        if len(seeds) > 1:
            pairs = list(pairs) + [(f"s{seeds[0]}", f"s{seeds[1]}")]
        res["lines"] = _lines(a.name, ep, pairs, ev, a.points)
        for cp in [c for c in a.curve_pairs.split(",") if c]:
            res["curves"][cp] = _curve(a.name, a, ep, cp, data, ev)
    (root / "result.json").write_text(json.dumps(res, indent=1, default=float))
    print("DONE", a.name, flush=True)
    return res


if __name__ == "__main__":
    main()
