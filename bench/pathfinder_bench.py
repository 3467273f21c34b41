"""Path finders and alignment: AutoNEB against a Bezier curve at an equal evaluation budget, and
weight matching of two VGG-16s.

- ``autoneb_s`` / ``bezier_equal_budget_s``: :func:`closerlook.autoneb.autoneb` on the demo model
  (``small_cnn`` width 0.5, no BN, 1x28x28) between two networks, then
  :func:`closerlook.curves.fit_curve` (quadratic Bezier, one t per batch) for as many gradient
  evaluations (minibatch forward + backward) as AutoNEB used, on the same batch size.
  AutoNEB's segment evaluations for pivot insertion (forward only) are part of its time.
  ``autoneb_over_bezier``: the ratio.
- ``align_vgg16_s``: :func:`closerlook.align.weight_matching` of two independently initialised
  VGG-16s (10 classes, 3x32x32, 4096-wide FC) on the CPU, forward sweep + coordinate descent.

Random uint8 images: the cost does not depend on the pixels. Wall-clock seconds (the
LAP solver and the float32 products run on this process's threads).

Usage: ``python -m bench.pathfinder_bench [--threads 1] [--json out.json]``; ``run()`` returns a flat dict.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from closerlook import align, autoneb, curves
from closerlook.data import DeviceLoader
from closerlook.models import build_model

DEMO_MODEL = {"name": "small_cnn", "batch_norm": False, "init": "kaiming", "width": 0.5}


def _loader(n: int, batch: int, seed: int = 0) -> DeviceLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return DeviceLoader(x, y, batch, mean=[0.286], std=[0.353], augment=False, shuffle=True, seed=seed, device="cpu")


def _net(seed: int, spec=DEMO_MODEL, shape=(1, 10, 28)):
    torch.manual_seed(seed)
    return build_model(spec, *shape)


def autoneb_vs_bezier(cycles: int = 2, steps: int = 20, batch: int = 128) -> dict:
    a, b, module = _net(1).state_dict(), _net(2).state_dict(), _net(0)
    settings = {"cycles": cycles, "steps": steps, "batch_size": batch, "init_pivots": 1, "eval_batches": 2}
    t0 = time.perf_counter()
    _path, rows = autoneb.autoneb(module, a, b, _loader(2000, batch), settings)
    neb_s = time.perf_counter() - t0
    evals = int(rows["grad_evals"].iloc[-1])
    curve = curves.Curve(_net(0), a, b, kind="bezier", num_bends=3)
    t0 = time.perf_counter()  # one epoch of exactly `evals` batches: one gradient evaluation each
    curves.fit_curve(curve, _loader(evals * batch, batch, seed=1), epochs=1, lr=0.015, seed=0)
    bez_s = time.perf_counter() - t0
    return {"autoneb_grad_evals": evals, "autoneb_s": round(neb_s, 2), "bezier_equal_budget_s": round(bez_s, 2),
            "autoneb_over_bezier": round(neb_s / bez_s, 3)}


def align_vgg16() -> dict:
    spec = {"name": "vgg16", "batch_norm": True}
    net_a, net_b = _net(0, spec, (3, 10, 32)), _net(1, spec, (3, 10, 32))
    perm = align.permutation_spec(net_a)
    t0 = time.perf_counter()
    align.weight_matching(perm, net_a.state_dict(), net_b.state_dict())
    return {"align_vgg16_s": round(time.perf_counter() - t0, 2), "align_vgg16_groups": len(perm.sizes)}


def run(threads: int | None = 1, verbose: bool = True) -> dict:
    if threads:
        torch.set_num_threads(threads)
    out = {"threads": torch.get_num_threads(), **autoneb_vs_bezier(), **align_vgg16()}
    if verbose:
        print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.pathfinder_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args.threads)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
