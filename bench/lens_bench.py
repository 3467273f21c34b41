"""Lens benchmark: the cost of a filter-normalised 2-D grid point, and trajectory PCA in bounded memory.

- ``lens_grid_pps`` / ``lens_grid_naive_pps``: grid points per second of a 2-D filter-normalised
  slice (:func:`closerlook.lenses.random_slices`' grid, through
  :func:`closerlook.landscape.surface_metrics`: one state dict per point, ``functional_call``) vs a
  naive loop (a new model per point, the weights as a per-key sum, ``load_state_dict``,
  ``torch.optim.swa_utils.update_bn``, evaluation). ``lens_point_over_pass``: our time per point
  over ONE BN pass + ONE evaluation of the same data on a fixed state (target <= 1.1: nothing
  but the two passes and a vector sum per point).
- ``pca_peak_rss_mb``: peak resident memory of a subprocess that runs the streamed Gram PCA
  (:func:`closerlook.lenses.trajectory_gram`, ``pca_from_gram``, ``pca_components``) over
  ``--checkpoints`` synthetic checkpoints of a ``--params``-parameter model written to a temporary
  directory (default 100 x 15M: 12 GB as a stacked float64 matrix); ``pca_bound_mb`` is the held
  chunk (at most ``memory_mb``) + the origin + one streamed vector (float64) + one load's transients
  (the float32 file and its float64 copy), on top of ``pca_base_rss_mb`` (the process after its
  imports); ``pca_s`` its wall time.

Model of the grid part: ``small_cnn`` with BN on random Fashion-MNIST-shaped images (the cost does
not depend on the pixels); CPU, 1 thread, process CPU time (shared machines).

Usage: ``python -m bench.lens_bench [--checkpoints 100] [--params 15000000] [--skip-pca] [--json out]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from closerlook import landscape as L
from closerlook import lenses as Ls


def _model(seed: int, width: float = 1.0):
    torch.manual_seed(seed)
    from closerlook.models import build_model

    return build_model({"name": "small_cnn", "batch_norm": True, "width": width}, 1, 10, 28)


def _loader(x, y, batch):
    from closerlook.data import DeviceLoader

    return DeviceLoader(x, y, batch, mean=[0.286], std=[0.353], augment=False, shuffle=False, seed=0, device="cpu")


def _naive_point(sd, d0, d1, a, b, tr, te) -> None:
    model = _model(0)
    model.load_state_dict({k: (v + a * d0[k] + b * d1[k]) if k in d0 else v.clone() for k, v in sd.items()})
    torch.optim.swa_utils.update_bn(tr, model)
    model.eval()
    with torch.no_grad():
        for loader in (tr, te):
            for x, y in loader.batches(0):
                out = model(x)
                F.cross_entropy(out, y, reduction="sum").item()
                (out.argmax(1) == y).sum().item()


def grid(images: int = 1000, test_images: int = 500, n: int = 3, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    clock = time.process_time
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (images,), generator=g)
    xt = torch.randint(0, 256, (test_images, 1, 28, 28), generator=g, dtype=torch.uint8)
    yt = torch.randint(0, 10, (test_images,), generator=g)
    tr, te = _loader(x, y, 500), _loader(xt, yt, 500)
    module = _model(1)
    sd = module.state_dict()
    from closerlook.curves import Layout

    lay = Layout(module)
    dirs = [Ls.filter_normalised_direction(module, sd, s) for s in (0, 1)]
    origin = lay.flat_params(sd, torch.float64)
    coords = [(u, v) for v in torch.linspace(-1, 1, n).tolist() for u in torch.linspace(-1, 1, n).tolist()]
    L.surface_metrics(module, sd, origin, dirs, coords[:1], tr, te)  # warm-up
    t0 = clock()
    L.surface_metrics(module, sd, origin, dirs, coords, tr, te)
    ours = (clock() - t0) / len(coords)
    st = {k: v.clone() for k, v in sd.items()}
    t0 = clock()
    for _ in range(3):
        L.recompute_bn(module, st, tr)
        L.evaluate_state(module, st, tr)
        L.evaluate_state(module, st, te)
    one_pass = (clock() - t0) / 3
    per_key = [lay.split(d.float(), lay.param_keys, lay.param_sizes) for d in dirs]
    _naive_point(sd, *per_key, 0.0, 0.0, tr, te)  # warm-up
    t0 = clock()
    for a, b in coords:
        _naive_point(sd, *per_key, a, b, tr, te)
    naive = (clock() - t0) / len(coords)
    return {"threads": torch.get_num_threads(), "lens_grid_points": len(coords),
            "lens_grid_pps": round(1.0 / ours, 3), "lens_grid_naive_pps": round(1.0 / naive, 3),
            "lens_grid_speedup": round(naive / ours, 3), "lens_point_s": round(ours, 4),
            "lens_one_pass_s": round(one_pass, 4), "lens_point_over_pass": round(ours / one_pass, 3)}


def _pca_child(folder: str, n: int, memory_mb: float) -> dict:
    """In a fresh process: the streamed PCA of the n checkpoints in ``folder``; peak RSS from the kernel."""
    from closerlook.io import safe_torch_load

    files = [Path(folder) / f"ck{i:03d}.pt" for i in range(n)]
    load = lambda i: safe_torch_load(files[i])["w"].to(torch.float64)  # noqa: E731
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # after the imports: torch, pandas, ...
    t0 = time.perf_counter()
    origin = load(n - 1)
    pca = Ls.pca_from_gram(Ls.trajectory_gram(load, n, origin, memory_mb), "final")
    comps = Ls.pca_components(load, n, origin, pca, k=2)
    wall = time.perf_counter() - t0
    p = origin.numel()
    held = min(Ls._chunk_size(p, memory_mb), n) + 1
    # the held chunk, the origin, one streamed vector, and one load's transients (the float32 file + its float64 copy)
    bound = ((held - 1) * 8 * p + 8 * p + 8 * p + 12 * p) / 2**20
    return {"pca_s": round(wall, 1), "pca_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "pca_base_rss_mb": round(base, 1),
            "pca_bound_mb": round(bound, 1), "pca_memory_mb": memory_mb,
            "pca_rss_over_bound": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base) / bound, 3),
            "pca_stacked_mb": round(n * p * 8 / 2**20, 1), "pca_checkpoints": n, "pca_params": p,
            "pca_explained_2": round(float(pca.explained[:2].sum()), 4), "pca_components_finite": bool(torch.isfinite(comps).all())}


def pca(checkpoints: int = 100, params: int = 15_000_000, memory_mb: float = 1024) -> dict:
    """Write synthetic checkpoints (a random walk, float32) and run the PCA child on them."""
    with tempfile.TemporaryDirectory(prefix="closerlook-pca-bench-") as d:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(params, generator=g)
        for i in range(checkpoints):
            w += 0.01 * torch.randn(params, generator=g) * (1.0 + (i % 10))
            torch.save({"w": w}, Path(d) / f"ck{i:03d}.pt")
        code = (f"import json; from bench.lens_bench import _pca_child; "
                f"print(json.dumps(_pca_child({d!r}, {checkpoints}, {memory_mb})))")
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           cwd=Path(__file__).resolve().parents[1])
        if r.returncode != 0:
            return {"pca_error": r.stderr[-800:]}
        return json.loads(r.stdout.strip().splitlines()[-1])


def run(checkpoints: int = 100, params: int = 15_000_000, skip_pca: bool = False, verbose: bool = True) -> dict:
    out = grid()
    if verbose:
        print(f"2-D filter-normalised grid, small_cnn+BN, {out['threads']} thread: {out['lens_grid_pps']} points/s "
              f"(naive rebuild-and-load {out['lens_grid_naive_pps']}; x{out['lens_grid_speedup']}); one point = "
              f"{out['lens_point_over_pass']} x (one BN pass + one evaluation)", flush=True)
    if not skip_pca:
        out.update(pca(checkpoints, params))
        if verbose and "pca_error" not in out:
            print(f"trajectory PCA, {checkpoints} checkpoints x {params / 1e6:.1f}M parameters: {out['pca_s']} s, "
                  f"peak RSS {out['pca_peak_rss_mb']} MB (after imports {out['pca_base_rss_mb']} MB; bound on top "
                  f"{out['pca_bound_mb']} MB; stacked matrix "
                  f"{out['pca_stacked_mb']} MB)", flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.lens_bench")
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--params", type=int, default=15_000_000)
    ap.add_argument("--skip-pca", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    from closerlook.io import atomic_write_json

    res = run(a.checkpoints, a.params, a.skip_pca)
    print(json.dumps(res, indent=1, sort_keys=True))
    return res if not a.json else (atomic_write_json(a.json, res) or res)


if __name__ == "__main__":
    main()
