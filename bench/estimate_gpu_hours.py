"""GPU-hours of a study config on one GPU, stage by stage, computed from the config.

Everything is counted in *training-epoch equivalents* (one epoch = one training pass over
the training set: forward + backward + step on every image) and multiplied by the
per-epoch GPU time of the model.  Per-epoch costs are inputs, not measurements of ours:
by default the ANCHORS figures for a VGG-16 CIFAR-10 epoch on a modern GPU, about
1-2 s with a tuned loop (data on the GPU, bf16, channels_last: what the engine does)
and 5-15 s with a plain DataLoader loop.  Replace them with the H200 measurement of
``bench/gpu_check.py`` (``--epoch-s tuned=LO,HI plain=LO,HI``) once it has run.

Cost model (stated so it can be checked):

- training: seeds x epochs per run; + test-set evaluation every ``eval_every`` epochs
  (forward only = 1/3 of a training image); distillation adds a teacher forward (1/3);
  large batches (micro-batches) are taken at the same cost per image;
- curve fitting: instances x curve epochs x the measured curve-epoch / training-epoch
  ratio (``curve_epoch_over_train_epoch`` of ``results/bench/bench.json``; 1.2 when absent);
- path evaluation: instances x 2 paths (curve, line) x points x (BN pass over the
  BN images when the model has BN + evaluation on the train images + the test set),
  all forward (1/3 per image);
- plane: instances x grid points x (BN pass if BN + train + test evaluation);
- activations: distinct checkpoints of the similarity comparisons x one forward of the
  probe set (1/3 per image) -- disk writes not counted;
- similarity: DFT-CCA FLOPs (per layer: frequencies x 3 complex products of
  probe x channels^2, 8 real FLOPs per complex multiply-add), per probe-set pass (the
  value, the chance shuffles, the subsamples); the other measures are not counted (they
  work on far fewer neurons). The similarity rule is numpy on the CPU (since stop 33), so
  these are CPU core-hours, not GPU-hours: FLOPs at ``--cpu-gflops`` per core (default
  16.6, measured: one cifar_lite comparison's DFT-CCA table, 1.33e12 FLOPs by this count,
  took 80 s on one core of a 2-core AMD EPYC Zen 4 at 9cb591d; docs/performance.md), shown
  in their own column and total, outside the GPU total.

Usage: ``python -m bench.estimate_gpu_hours [--config config/config.yaml] [--markdown]``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CPU_GFLOPS = 16.6    # DFT-CCA on one CPU core, by this module's FLOP count (measured: docs/performance.md)
FWD = 1.0 / 3.0      # forward-only image cost relative to a training image (fwd 1 : bwd 2)
DATASET_SIZES = {"cifar10": (50_000, 10_000), "cifar10_jpeg": (50_000, 10_000), "fashion_mnist": (60_000, 10_000)}


def _sizes(cfg: dict) -> tuple[int, int]:
    d = cfg["data"]
    n_tr, n_te = DATASET_SIZES.get(d["name"], (50_000, 10_000))
    if d.get("train_per_class"):
        n_tr = 10 * int(d["train_per_class"])
    if d.get("test_per_class"):
        n_te = 10 * int(d["test_per_class"])
    return n_tr, n_te


def _has_bn(model_spec: dict) -> bool:
    return bool(model_spec.get("batch_norm", False)) or model_spec.get("name") == "resnet18"


def _data_shape(cfg: dict) -> tuple[int, int, int]:
    """(channels, image size, classes) of the config's data set (CIFAR-10 or Fashion-MNIST)."""
    return (3, 32, 10) if cfg["data"]["name"].startswith("cifar") else (1, 28, 10)


def _layer_shapes(model_spec: dict, info: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    import torch

    from closerlook import models
    from closerlook.activations import layer_shapes

    c, s, k = info
    with torch.device("meta"):  # shapes only: no weights allocated
        m = models.build_model(dict(model_spec), c, k, s)
    shapes = layer_shapes(m, None, (c, s, s)).values()
    return [sh if len(sh) == 3 else (sh[0], 1, 1) for sh in shapes]


def curve_epochs(s: dict, n_tr: int, curve_steps: int | None) -> tuple[int, str]:
    """A curve's fitting epochs: the config's cap, or, given ``curve_steps`` (optimiser steps to convergence
    under the stopping rule, measured at a smaller scale and ASSUMED to carry over in steps, not epochs),
    ceil(steps / steps per epoch) + the rule's patience checks, at most the cap."""
    cap = int(s["epochs"])
    if curve_steps is None:
        return cap, "the cap"
    per_epoch = -(-n_tr // int(s["batch_size"]))
    patience = int((s.get("stop") or {}).get("patience", 0))
    return min(cap, -(-int(curve_steps) // per_epoch) + patience), f"{curve_steps:,} steps / {per_epoch} per epoch + {patience}"


def estimate(cfg: dict, curve_factor: float, cpu_gflops: float, curve_steps: int | None = None) -> list[dict]:
    from closerlook import config as C

    n_tr, n_te = _sizes(cfg)
    rows = []
    # training
    ep = 0.0
    detail = []
    for name in C.run_names(cfg):
        r = C.resolve_run(cfg, name)
        seeds = len(r["seeds"])
        e = int(r["epochs"])
        evals = e / max(int(r.get("eval_every", 1)), 1)
        per = e * (1 + (FWD if r.get("distill") else 0.0)) + evals * FWD * n_te / n_tr
        ep += seeds * per
        detail.append(f"{name} {seeds}x{e}")
    rows.append({"stage": "training runs", "count": "; ".join(detail), "epochs": ep})
    # curves
    fit = evals = 0.0
    plane = 0.0
    n_inst = 0
    pts = 0
    lengths = set()
    for cname in cfg.get("curves") or {}:
        s = C.curve_settings(cfg, cname)
        inst = len(C.curve_instances(cfg, cname))
        n_inst += inst
        e, how = curve_epochs(s, n_tr, curve_steps)
        lengths.add(f"{e} ({how})")
        fit += inst * e * curve_factor
        model = C.resolve_run(cfg, cfg["curves"][cname]["start"]["run"])["model"]
        n_eval_tr = int(s.get("eval_train_images") or n_tr)
        bn = n_eval_tr if _has_bn(model) else 0
        per_point = FWD * (bn + n_eval_tr + n_te) / n_tr
        evals += inst * 2 * int(s["points"]) * per_point
        pts += inst * 2 * int(s["points"])
    rows.append({"stage": "curve fitting", "count": f"{n_inst} instances x {' / '.join(sorted(lengths))} epochs x "
                 f"{curve_factor:.2f} (curve/plain epoch)",
                 "epochs": fit})
    rows.append({"stage": "path evaluation", "count": f"{pts} points (curve + line) x (BN pass if BN + train + test forward)",
                 "epochs": evals})
    gpts = 0
    for pname in cfg.get("planes") or {}:
        p = C.plane_settings(cfg, pname)
        inst = len(C.curve_instances(cfg, p["curve"]))
        g = int(p["grid"][0]) * int(p["grid"][1])
        model = C.resolve_run(cfg, cfg["curves"][p["curve"]]["start"]["run"])["model"]
        n_eval_tr = int(p.get("eval_train_images") or n_tr)
        bn = n_eval_tr if _has_bn(model) else 0
        plane += inst * g * FWD * (bn + n_eval_tr + n_te) / n_tr
        gpts += inst * g
    rows.append({"stage": "plane grids", "count": f"{gpts} grid points x (BN if BN + train + test forward)", "epochs": plane})
    # activations + similarity
    sim = C.similarity_settings(cfg)
    probe = int(cfg["data"].get("probe_size") or 10_000)
    ckpts = set()
    pairs = 0
    model_spec = None
    for comp in sim.get("comparisons") or {}:
        for a, b in C.comparison_instances(cfg, comp).values():
            ckpts.update({a, b})
            pairs += 1
            model_spec = model_spec or C.resolve_run(cfg, a.run)["model"]
    rows.append({"stage": "activations", "count": f"{len(ckpts)} checkpoints x {probe} probe images forward",
                 "epochs": len(ckpts) * FWD * probe / n_tr})
    sim_s = 0.0
    if pairs and any(str(m).startswith("dft") for m in sim["measures"]):
        info = _data_shape(cfg)
        flops = 0.0
        for c, h, w in _layer_shapes(model_spec, info):
            flops += h * w * 3 * probe * c * c * 8
        flops *= pairs * _similarity_passes(sim, probe)
        sim_s = flops / (cpu_gflops * 1e9)
    rows.append({"stage": "similarity (DFT-CCA, CPU)", "count": f"{pairs} comparisons x {_similarity_passes(sim, probe):.3g} "
                 f"probe-set passes (chance shuffles, subsamples), at {cpu_gflops:g} GFLOP/s per core",
                 "epochs": None, "cpu_seconds": sim_s})
    ctl = C.control_settings(cfg)
    if ctl and model_spec and "dft_cca_mean98" in ctl["measures"]:
        rows.append(_controls_row(ctl, model_spec, cfg, probe, n_tr, cpu_gflops))
    return rows


def _controls_row(ctl: dict, model_spec: dict, cfg: dict, probe: int, n_tr: int, cpu_gflops: float) -> dict:
    """The positive controls' DFT-CCA: identification's cross-layer matrix (every pair of conv layers at their
    overlapping frequencies, channels_i x channels_j products) and change detection (each layer once, after
    capturing the checkpoint and its re-initialised copy: two probe-set forwards); no shuffles."""
    shapes = _layer_shapes(model_spec, _data_shape(cfg))
    flops = 0.0
    if ctl.get("identification"):
        flops += sum(min(hi, hj) * min(wi, wj) * 3 * probe * ci * cj * 8
                     for ci, hi, wi in shapes for cj, hj, wj in shapes)
    if ctl.get("change_detection"):
        flops += sum(h * w * 3 * probe * c * c * 8 for c, h, w in shapes)
    return {"stage": "positive controls (DFT-CCA on the CPU; 2 forwards on the GPU)",
            "count": f"{len(shapes)} x {len(shapes)} layer pairs (identification) + {len(shapes)} (change detection), "
                     f"at {cpu_gflops:g} GFLOP/s per core; 2 probe-set forwards",
            "epochs": 2 * FWD * probe / n_tr if ctl.get("change_detection") else 0.0,
            "cpu_seconds": flops / (cpu_gflops * 1e9)}


def _similarity_passes(sim: dict, probe: int) -> float:
    """Whole-probe-set equivalents per comparison: the value, K shuffles, and B subsamples of m images
    with K shuffles at m (closerlook.similarity_tables.layer_table)."""
    k = int(sim.get("chance_shuffles") or 0) if sim.get("chance") else 0
    sub = sim.get("subsamples") or {}
    b, m = int(sub.get("count") or 0), int(sub.get("size") or probe // 2)
    return 1 + k + (b + (k if b else 0)) * m / probe


def markdown(rows: list[dict], costs: dict, cfg_path: str, source: str) -> str:
    cols = list(costs)
    L = [f"Config `{cfg_path}`; per-epoch GPU cost: {source}. Epoch equivalents are computed by "
         "`python -m bench.estimate_gpu_hours` from the config; the similarity rule runs on the CPU (its own column).",
         "", "| stage | what is counted | epoch equivalents | "
         + " | ".join(f"GPU-h, {c} ({lo:g}-{hi:g} s/epoch)" for c, (lo, hi) in costs.items()) + " | CPU core-h |",
         "| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: |"]
    tot = {c: [0.0, 0.0] for c in cols}
    tot_ep = tot_cpu = 0.0
    for r in rows:
        cells = []
        for c, (lo, hi) in costs.items():
            a, b = ((r["epochs"] * lo / 3600, r["epochs"] * hi / 3600) if r["epochs"] is not None else (0.0, 0.0))
            tot[c][0] += a
            tot[c][1] += b
            cells.append("-" if r["epochs"] is None else (f"{a:.2f}-{b:.2f}" if abs(a - b) > 1e-9 else f"{a:.2f}"))
        cpu = r.get("cpu_seconds", 0.0) / 3600
        tot_cpu += cpu
        tot_ep += r["epochs"] or 0.0
        ep = f"{r['epochs']:,.0f}" if r["epochs"] is not None else "-"
        cpu_cell = f"{cpu:.1f}" if "cpu_seconds" in r else "-"
        L.append(f"| {r['stage']} | {r['count']} | {ep} | " + " | ".join(cells) + f" | {cpu_cell} |")
    L.append(f"| **total** | | **{tot_ep:,.0f}** | " + " | ".join(f"**{a:.0f}-{b:.0f}**" for a, b in tot.values())
             + f" | **{tot_cpu:.0f}** |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.estimate_gpu_hours", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config/config.yaml"))
    ap.add_argument("--epoch-s", nargs="*", default=["tuned=1,2", "plain=5,15"],
                    help="per-epoch GPU seconds, NAME=LO,HI (default: the ANCHORS VGG-16 figures)")
    ap.add_argument("--curve-factor", type=float, default=None,
                    help="curve epoch / training epoch (default: results/bench/bench.json, else 1.2)")
    ap.add_argument("--cpu-gflops", type=float, default=CPU_GFLOPS,
                    help="float64 DFT-CCA rate of one CPU core (default: measured here, see the module docstring)")
    ap.add_argument("--curve-steps", type=int, default=None,
                    help="optimiser steps a curve fit takes to converge (stopping rule), measured at a smaller scale and "
                         "assumed to carry over in steps (default: every curve runs to its epochs cap)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from closerlook import config as C

    cfg = C.load_config(a.config)
    cf, src = a.curve_factor, "--curve-factor"
    if cf is None:
        try:
            cf = float(json.loads((ROOT / "results/bench/bench.json").read_text())["curve_epoch_over_train_epoch"])
            src = "results/bench/bench.json (CPU, small_cnn+BN)"
        except (OSError, KeyError, TypeError, ValueError):
            cf, src = 1.2, "default 1.2"
    costs = {}
    for item in a.epoch_s:
        name, rng = item.split("=")
        lo, hi = (float(v) for v in rng.split(","))
        costs[name] = (lo, hi)
    rows = estimate(cfg, cf, a.cpu_gflops, a.curve_steps)
    if a.json:
        print(json.dumps({"rows": rows, "curve_factor": cf, "costs": costs}, indent=1))
    else:
        print(markdown(rows, costs, Path(a.config).name,
                       "ANCHORS VGG-16 CIFAR-10 epoch figures (not measured on the H200: the check has not run)"
                       if a.epoch_s == ap.get_default("epoch_s") else "given on the command line"))
        print(f"curve epoch / training epoch = {cf:.2f} from {src}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
