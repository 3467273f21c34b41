"""Mode-connectivity benchmark: cost of one evaluated path point and of one curve-fitting epoch.

- ``curve_point_s``: one point of :func:`closerlook.landscape.evaluate_path`
  (weights = a weighted sum of the flat control points, BN statistics
  recomputed by ``functional_call`` over the BN data, then evaluation on the
  train and test sets), averaged over a few t.
- ``curve_point_naive_s``: the same point done the naive way: a new model per
  point, the weights as a per-key weighted sum of the control-point state
  dicts, ``load_state_dict``, ``torch.optim.swa_utils.update_bn``, evaluation.
- ``curve_epoch_over_train_epoch``: one :func:`closerlook.curves.fit_curve`
  epoch (quadratic Bezier, one t per batch, L2 on phi(t)) over one plain
  training epoch of the same model (SGD momentum, same loader, same batch).

Model: ``small_cnn`` with BN (so that the BN pass is part of the cost) on
Fashion-MNIST-shaped images (random uint8: the cost does not depend on the
pixels). CPU, ``threads`` threads; times are process CPU seconds by default
(the machines are shared), wall-clock with ``--wall``. ``curve_point_overhead*``:
the same point on a single 20-image batch, i.e. the per-point cost that is not
data passes (weights, BN reset, model construction for the naive way).

Usage: ``python -m bench.curve_bench [--images 1000] [--threads 1] [--json out.json]``;
``run()`` returns a flat dict.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from closerlook import curves as C
from closerlook import landscape as L


def _model(seed: int, width: float):
    torch.manual_seed(seed)
    from closerlook.models import build_model

    return build_model({"name": "small_cnn", "batch_norm": True, "width": width}, 1, 10, 28)


def _loader(x, y, batch, shuffle, seed=0):
    from closerlook.data import DeviceLoader

    return DeviceLoader(x, y, batch, mean=[0.286], std=[0.353], augment=False, shuffle=shuffle, seed=seed,
                        device="cpu")


def _naive_point(curve: C.Curve, controls: list[dict], t: float, tr, te, width: float) -> None:
    coeffs = curve.coefficients(t)
    model = _model(0, width)
    sd = {}
    for k in controls[0]:
        v0 = controls[0][k]
        if v0.is_floating_point():
            sd[k] = sum(c * cp[k] for c, cp in zip(coeffs, controls))
        else:
            sd[k] = v0.clone()
    model.load_state_dict(sd)
    torch.optim.swa_utils.update_bn(tr, model)
    model.eval()
    with torch.no_grad():
        for loader in (tr, te):
            loss, correct, n = 0.0, 0, 0
            for x, y in loader.batches(0):
                out = model(x)
                loss += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
                n += len(y)


def _plain_epoch(model, loader, clock, lr=0.05) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    t0 = clock()
    for x, y in loader.batches(0):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        loss.item()
    return clock() - t0


def run(images: int = 1000, test_images: int = 500, batch: int = 50, eval_batch: int = 500, points: int = 3,
        width: float = 1.0, threads: int | None = 1, cpu_time: bool = True, verbose: bool = True) -> dict:
    """``cpu_time``: time with ``time.process_time`` (robust on a shared machine, right for 1 thread);
    False: wall-clock ``perf_counter``."""
    clock = time.process_time if cpu_time else time.perf_counter
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (images,), generator=g)
    xt = torch.randint(0, 256, (test_images, 1, 28, 28), generator=g, dtype=torch.uint8)
    yt = torch.randint(0, 10, (test_images,), generator=g)
    tr, te = _loader(x, y, eval_batch, False), _loader(xt, yt, eval_batch, False)
    a, b = _model(1, width), _model(2, width)
    module = _model(0, width)
    curve = C.Curve(module, a.state_dict(), b.state_dict(), kind="bezier", num_bends=3)
    with torch.no_grad():
        curve.bends.add_(0.01 * torch.randn_like(curve.bends))
    ts = [0.25 + 0.5 * i / max(points - 1, 1) for i in range(points)]

    controls = curve.control_points()

    def ours(trl, tel):
        L.evaluate_path(curve, trl, tel, ts=[0.5])  # warm-up
        t0 = clock()
        L.evaluate_path(curve, trl, tel, ts=ts)
        return (clock() - t0) / len(ts)

    def naive(trl, tel):
        _naive_point(curve, controls, 0.5, trl, tel, width)  # warm-up
        t0 = clock()
        for t in ts:
            _naive_point(curve, controls, t, trl, tel, width)
        return (clock() - t0) / len(ts)

    point_s, naive_s = ours(tr, te), naive(tr, te)
    # the per-point overhead alone: one 20-image batch for BN, train and test
    tiny = _loader(x[:20], y[:20], 20, False)
    small_s, small_naive_s = ours(tiny, tiny), naive(tiny, tiny)

    fit_loader = _loader(x, y, batch, True, seed=1)
    plain_s = _plain_epoch(_model(3, width), fit_loader, clock)
    t0 = clock()
    C.fit_curve(curve, fit_loader, epochs=1, lr=0.05, seed=0)
    curve_epoch_s = clock() - t0
    plain_s = min(plain_s, _plain_epoch(_model(3, width), fit_loader, clock))

    out = {
        "threads": torch.get_num_threads(),
        "curve_images": images,
        "curve_point_s": round(point_s, 4),
        "curve_point_naive_s": round(naive_s, 4),
        "curve_point_ratio": round(point_s / naive_s, 3),
        "curve_point_overhead_s": round(small_s, 4),
        "curve_point_overhead_naive_s": round(small_naive_s, 4),
        "curve_point_overhead_ratio": round(small_s / small_naive_s, 3),
        "curve_epoch_s": round(curve_epoch_s, 3),
        "curve_train_epoch_s": round(plain_s, 3),
        "curve_epoch_over_train_epoch": round(curve_epoch_s / plain_s, 3),
    }
    if verbose:
        print(f"small_cnn+BN (width {width}), {images} train / {test_images} test images, "
              f"{out['threads']} thread(s): one path point {point_s:.3f}s (naive {naive_s:.3f}s, "
              f"ratio {out['curve_point_ratio']}; overhead alone {small_s:.4f}s vs {small_naive_s:.4f}s); curve epoch {curve_epoch_s:.2f}s vs training epoch "
              f"{plain_s:.2f}s (x{out['curve_epoch_over_train_epoch']})")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.curve_bench")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--points", type=int, default=3)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall-clock instead of process CPU time")
    ap.add_argument("--json", help="write the result dict here")
    a = ap.parse_args(argv)
    res = run(a.images, a.test_images, points=a.points, width=a.width, threads=a.threads, cpu_time=not a.wall)
    print(json.dumps(res, indent=1, sort_keys=True))
    if a.json:
        from closerlook.io import atomic_write_json

        atomic_write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
