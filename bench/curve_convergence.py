"""Gradient evaluations until a fitted curve removes a two-seed barrier (issue 24.1).

``python -m bench.curve_convergence --start A/final.pt --end B/final.pt --config config/demo.yaml
--recipe ours --recipe garipov --fit-seed 0 1 2``

For each recipe and fit seed: the bends start on the straight line (or perturbed), the fit runs
with the recipe's lr / t sampling / batch size, and every quarter epoch of GRADIENT EVALUATIONS
(one image's forward + backward at one t = one evaluation; N = the training set size, so a quarter
epoch = N / 4 evaluations, whatever the t per batch) the stopping rule's measure is taken: the max
training loss over t = 0.25 / 0.5 / 0.75 on the first 500 training images. ``kept`` = (that max -
the higher endpoint's loss) / the straight line's barrier (9 points, same images). The answer is the
first count (in epochs of gradient evaluations, i.e. evaluations / N) where kept <= 0.25 and <= 0.10.
Counts, not wall time: the machine is shared. One JSON line per (recipe, fit seed).

Recipes (:data:`RECIPES`) are dicts of :func:`closerlook.curves.fit_step` knobs; ``garipov`` is the
fixed denominator: lr 0.015 at its constant phase, momentum 0.9, L2 5e-4 on the curve point, one
t ~ U(0, 1) per batch, batch as the config's curves.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
from typing import Any

import torch

from closerlook import curves, landscape
from closerlook.config import load_config, run_spec
from closerlook.data import DeviceLoader, batches_of, load_subsets
from closerlook.stages._common import _data_block, _endpoint, _module

# knobs: lr, t (t values per batch), sampling ("uniform" | "stratified"), split (one t per slice of the batch:
# no extra evaluations), batch (None: the config's), perturb (std of the bends' initial offset / ||end - start||)
RECIPES: dict[str, dict[str, Any]] = {
    "garipov": {"lr": 0.015, "t": 1, "sampling": "uniform", "split": False},
    "lr0.05": {"lr": 0.05, "t": 1, "sampling": "uniform", "split": False},
    "lr0.03": {"lr": 0.03, "t": 1, "sampling": "uniform", "split": False},
    "strat4-split-lr0.015": {"lr": 0.015, "t": 4, "sampling": "stratified", "split": True},
    "strat4-split-lr0.03": {"lr": 0.03, "t": 4, "sampling": "stratified", "split": True},
    "strat4-split-lr0.05": {"lr": 0.05, "t": 4, "sampling": "stratified", "split": True},
    "4t-lr0.05": {"lr": 0.05, "t": 4, "sampling": "uniform", "split": False},
    "batch25-lr0.015": {"lr": 0.015, "t": 1, "sampling": "uniform", "split": False, "batch": 25},
    "batch25-strat2-lr0.015": {"lr": 0.015, "t": 2, "sampling": "stratified", "split": True, "batch": 25},
    "batch25-strat2-lr0.03": {"lr": 0.03, "t": 2, "sampling": "stratified", "split": True, "batch": 25},
    # decay on plateau: at each epoch's check (the pipeline's stopping-rule cadence), lr x 0.5 when the max loss
    # has not fallen by more than 0.01 nats below its best
    "strat4-split-lr0.03-plateau": {"lr": 0.03, "t": 4, "sampling": "stratified", "split": True, "plateau": 0.5},
    "strat4-split-lr0.05-plateau": {"lr": 0.05, "t": 4, "sampling": "stratified", "split": True, "plateau": 0.5},
    "lr0.015-plateau": {"lr": 0.015, "t": 1, "sampling": "uniform", "split": False, "plateau": 0.5},
}
STOP_TS = (0.25, 0.5, 0.75)


def _setup(args):
    cfg = load_config(args.config)
    data = _data_block(run_spec(cfg, args.run, 0)["data"])
    xtr, ytr, _, _, info = load_subsets(data)
    a, b = _endpoint(args.start), _endpoint(args.end)
    dev = torch.device("cpu")
    module = _module(a, args.start, dev, [])
    ev = DeviceLoader(xtr[:args.images], ytr[:args.images], 500, mean=info["mean"], std=info["std"], device=dev,
                      augment=False, shuffle=False, seed=0, drop_last=False)
    line = curves.line(module, a["model"], b["model"])
    lt = landscape.evaluate_path(line, ev, None, ts=9)["train_loss"].tolist()
    top = max(lt[0], lt[-1])
    return cfg, xtr, ytr, info, a, b, module, ev, {"line": lt, "top": top, "barrier": max(lt) - top}


def measure(curve, ev) -> float:
    return float(landscape.evaluate_path(curve, ev, None, ts=list(STOP_TS))["train_loss"].max(skipna=False))


def run_one(recipe: dict, fit_seed: int, setup, args) -> dict:
    cfg, xtr, ytr, info, a, b, module, ev, ln = setup
    batch = int(recipe.get("batch") or args.batch_size)
    loader = DeviceLoader(xtr, ytr, batch, mean=info["mean"], std=info["std"], device=torch.device("cpu"),
                          augment=False, shuffle=True, seed=fit_seed, drop_last=False)
    curve = curves.Curve(module, a["model"], b["model"], kind="bezier", num_bends=int(recipe.get("bends", 3)))
    gen = torch.Generator().manual_seed(fit_seed)
    torch.manual_seed(fit_seed)
    opt = torch.optim.SGD([curve.bends], lr=recipe["lr"], momentum=0.9, weight_decay=0.0)
    n, quarter = len(xtr), len(xtr) / 4
    evals, next_check, hist, hit = 0, quarter, [], {}
    best, checks, lrs = math.inf, 0, []
    cap = args.cap_epochs * n
    epoch = 0
    curve.train()
    while evals < cap and not ("0.10" in hit):
        for x, y in batches_of(loader, epoch, 0):
            opt.zero_grad(set_to_none=True)
            ts = curves.sample_ts(int(recipe["t"]), recipe["sampling"], gen)
            st = curves.batch_gradient(curve, x, y, ts, args.wd, bool(recipe["split"]))
            if not math.isfinite(st["loss"]):
                return {"diverged": True, "evals_epochs": evals / n}
            opt.step()
            evals += st["n"]
            while evals >= next_check - 1e-9:
                m = measure(curve, ev)
                kept = (m - ln["top"]) / ln["barrier"]
                curve.train()
                checks += 1
                if recipe.get("plateau") and checks % 4 == 0:   # once per epoch of evaluations
                    if m < best - 0.01:
                        best = m
                    else:
                        for g in opt.param_groups:
                            g["lr"] *= float(recipe["plateau"])
                        lrs.append(round(next_check / n, 2))
                hist.append(round(kept, 3))
                for thr in ("0.25", "0.10"):
                    if thr not in hit and kept <= float(thr):
                        hit[thr] = next_check / n
                next_check += quarter
            if "0.10" in hit or evals >= cap:
                break
        epoch += 1
    return {"to_0.25": hit.get("0.25"), "to_0.10": hit.get("0.10"), "kept_per_quarter": hist, "lr_halved_at": lrs}


def config_recipe(cfg: dict, curve: str | None = None) -> dict:
    """"ours": the recipe a config fits its curves with (its first curve's settings)."""
    from closerlook.config import curve_settings

    s = curve_settings(cfg, curve or next(iter(cfg["curves"])))
    return {"lr": float(s["lr"]), "t": int(s["t_per_batch"]), "sampling": s["t_sampling"], "split": bool(s["t_split"]),
            "batch": int(s["batch_size"]), "bends": int(s["num_bends"]),
            **({"plateau": curves.PLATEAU_FACTOR} if s["schedule"] == "plateau" else {})}


def run(config: str = "config/demo.yaml", seeds: tuple[int, int] = (2, 3), fit_seed: int = 0,
        cap_epochs: float = 16.0) -> dict:
    """The ``make bench`` row: train seeds 2 and 3 of the config's ``sgd`` run (not the demo's control pair)
    into a temporary folder, then count gradient evaluations (epochs of them) until the curve keeps
    <= 25 % / <= 10 % of the line barrier, for the config's recipe ("ours") and Garipov's, one fit seed."""
    import tempfile

    from closerlook.train import train_run

    torch.set_num_threads(1)
    cfg = load_config(config)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="curve-conv-") as tmp:
        for s in seeds:
            spec = run_spec(cfg, "sgd", s)
            spec["checkpoints"] = {"epochs": [], "iterations": []}
            train_run(spec, f"{tmp}/s{s}", progress=None)
        args = argparse.Namespace(config=config, run="sgd", start=f"{tmp}/s{seeds[0]}/final.pt",
                                  end=f"{tmp}/s{seeds[1]}/final.pt", images=500, cap_epochs=cap_epochs,
                                  batch_size=int(config_recipe(cfg)["batch"]), wd=curves.FIT_DEFAULTS["weight_decay"])
        setup = _setup(args)
        out["curve_conv_line_barrier"] = round(setup[-1]["barrier"], 3)
        for name, recipe in (("garipov", RECIPES["garipov"]), ("ours", config_recipe(cfg))):
            r = run_one(recipe, fit_seed, setup, args)
            out[f"curve_conv_{name}_25"], out[f"curve_conv_{name}_10"] = r["to_0.25"], r["to_0.10"]
    for thr in ("25", "10"):
        g, o = out[f"curve_conv_garipov_{thr}"], out[f"curve_conv_ours_{thr}"]
        out[f"curve_conv_ratio_{thr}"] = round(g / o, 2) if g and o else None
    out["curve_conv_pair"] = f"{config} sgd seeds {seeds[0]}/{seeds[1]}, fit seed {fit_seed}"
    return out


def rule_stop(kept: list[float], barrier: float, min_delta: float = 0.01, patience: int = 2):
    """(epoch, kept there) where the pipeline's stopping rule (a check per epoch, ``min_delta`` nats,
    ``patience`` checks) would end the fit, replayed on a run's per-quarter measures; None if not reached."""
    best, wait = math.inf, 0
    for e in range(1, len(kept) // 4 + 1):
        v = kept[4 * e - 1] * barrier
        best, wait = curves.stop_update(best, wait, v, min_delta)
        if wait >= patience:
            return e, kept[4 * e - 1]
    return None


def table(files: list[str]) -> str:
    """Markdown: per recipe, epochs of gradient evaluations to <= 25 % / <= 10 % kept, every repeat and the worst,
    from this script's JSON lines (one file per endpoint pair)."""
    rows: dict[str, list] = {}
    for i, f in enumerate(files):
        barrier = None
        for line in open(f):
            d = json.loads(line)
            if "line_barrier" in d:
                barrier = d["line_barrier"]
            if "recipe" in d:
                rows.setdefault(d["recipe"], []).append((i, {**d, "barrier": barrier}))

    def worst(v):
        return "> cap" if any(x is None for x in v) else f"{max(v):g}"
    out = ["| recipe | repeats (pair.fit seed) | to <= 25 %: each | worst | to <= 10 %: each | worst | CPU s, mean |",
           "|---|---|---|---|---|---|---|"]
    for name, rs in rows.items():
        a = [d["to_0.25"] for _, d in rs]
        b = [d["to_0.10"] for _, d in rs]
        fmt = lambda v: " / ".join("-" if x is None else f"{x:g}" for x in v)  # noqa: E731
        reps = " ".join(f"{chr(65 + i)}.{d['fit_seed']}" for i, d in rs)
        cpu = sum(d["cpu_s"] for _, d in rs) / len(rs)
        out.append(f"| {name} | {reps} | {fmt(a)} | {worst(a)} | {fmt(b)} | {worst(b)} | {cpu:.0f} |")
    out += ["", "Where the pipeline's rule (one check per epoch, min_delta 0.01 nats, patience 2) would have stopped "
            "(epoch, kept fraction there), replayed on the same measures (runs end at <= 10 % kept or the cap):", ""]
    for name, rs in rows.items():
        out.append(f"- {name}: " + ", ".join(f"{chr(65 + i)}.{d['fit_seed']} "
                                             + (f"E{r[0]} {r[1]:.2f}" if (r := rule_stop(d["kept_per_quarter"], d["barrier"]))
                                                else "not before the run ended") for i, d in rs))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.curve_convergence", description=__doc__.splitlines()[0])
    ap.add_argument("--start")
    ap.add_argument("--end")
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--run", default="sgd", help="the run whose data block the fit uses")
    ap.add_argument("--recipe", action="append", default=None, choices=sorted(RECIPES) + ["ours"],
                    help="a recipe of RECIPES, or 'ours': the --config's curve recipe")
    ap.add_argument("--fit-seed", type=int, nargs="+", default=[0])
    ap.add_argument("--cap-epochs", type=float, default=16.0, help="give up after this many epochs of evaluations")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--wd", type=float, default=curves.FIT_DEFAULTS["weight_decay"])
    ap.add_argument("--images", type=int, default=500, help="images of the barrier measure")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bench", action="store_true", help="the make-bench row: train seeds 2/3, ours vs garipov")
    ap.add_argument("--table", nargs="+", metavar="JSONL", help="print the markdown table of earlier outputs")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.bench:
        print(json.dumps(run(args.config, cap_epochs=args.cap_epochs)), flush=True)
        return 0
    torch.set_num_threads(args.threads)
    setup = _setup(args)
    ln = setup[-1]
    print(json.dumps({"pair": [args.start, args.end], "line_barrier": round(ln["barrier"], 4),
                      "endpoint_top": round(ln["top"], 4)}), flush=True)
    for name in args.recipe or ["garipov"]:
        for s in args.fit_seed:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            res = run_one(config_recipe(setup[0]) if name == "ours" else RECIPES[name], s, setup, args)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
            print(json.dumps({"recipe": name, "fit_seed": s, **res, "cpu_s": round(cpu, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
