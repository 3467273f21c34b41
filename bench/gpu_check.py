"""GPU check: correctness first, then the VGG-16 CIFAR-10 epoch, MFU and similarity on one CUDA GPU.

One prepared script for a rented GPU (``bash bench/gpu_check.sh`` / ``make gpu-check``),
time-boxed to fit in about 8 minutes on an H200 (``--budget-s``, default 420):

1. correctness (stops with exit 1 if any fails):
   - a short training run with the fast path (GPU DeviceLoader, bf16 autocast,
     channels_last, the engine's step) memorising 256 images: the loss falls
     (mean of the last 10 steps < 0.7 x the first 10);
   - CUDA similarity equals CPU in float64 (CCA coefficients, linear CKA) to 1e-8;
   - curve endpoints exact on CUDA: ``Curve.weights_at(0) / (1)`` equal the
     endpoint state dicts bit for bit.
2. a VGG-16 (paper model, no BN) CIFAR-10 training epoch, batch 128:
   - ``plain``: torchvision-style ``DataLoader`` with per-image PIL transforms
     (RandomCrop 32 pad 4, flip, ToTensor, Normalize; ``--workers`` processes,
     pinned memory), fp32, ``zero_grad``/forward/backward/step/``loss.item()``;
   - ``fast``: the whole set on the GPU as uint8 (:class:`closerlook.data.DeviceLoader`:
     batched crop+flip, normalisation on the fly), bf16 autocast, channels_last, the
     engine's step (finiteness check every 8 steps as ``train_run`` does on CUDA);
   - ``fast+compile``: the same with ``torch.compile`` when the remaining budget allows
     (compilation time is reported separately and not counted in the epoch).
   Data: ``shared/data/cifar10-jpeg.zip`` (in the checkout, so that the device tool
   carries it) or ``../shared/data/cifar10-jpeg.zip``; else synthetic uint8 images of
   CIFAR shape (throughput does not depend on the pixels); the table says which.
   An epoch that would overrun its time box is extrapolated from the timed batches
   (the table says so).
   Targets: fast >= 5x plain; model-FLOPs utilisation >= 30 %, where training FLOPs
   per image = 6 x the forward multiply-adds per image (:func:`closerlook.models.count_macs`),
   over the bf16 matmul rate measured here (8192^3 ``torch.matmul``).
3. similarity at (512 x 50,000): CCA (float64 and float32 products) and linear CKA,
   CUDA vs CPU (numpy), times and agreement.

Output: a markdown table (and a JSON of the numbers) written to ``$OUT/gpu_check.md``
when ``OUT`` is set (the device tool collects ``$OUT``), else ``results/bench/gpu_check.md``.

Exit status: 0 all ran (targets met or not: the table says); 1 a correctness check
failed; 2 no CUDA device (nothing measured: "no CUDA" is printed). ``--device cpu --tiny``
runs every code path with tiny sizes on the CPU (a smoke test of the script, no targets).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

# closerlook comes from the project venv, or from src/ through PYTHONPATH (bench/gpu_check.sh sets it)
from closerlook import curves as C  # noqa: E402
from closerlook import data, devices, models  # noqa: E402
from closerlook import similarity as S  # noqa: E402
from closerlook.train import accumulate_gradients, build_optimizer  # noqa: E402

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]
OPT = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False, "dampening": 0.0}
ZIP_CANDIDATES = ("shared/data/cifar10-jpeg.zip", "../shared/data/cifar10-jpeg.zip")


class Clock:
    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget = budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- correctness

def check_training(device, log) -> dict:
    """The fast path memorises 256 images: the loss must fall."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    torch.manual_seed(0)
    model = models.build_model({"name": "small_cnn", "batch_norm": True}, 3, 10, 32).to(device)
    model = model.to(memory_format=torch.channels_last)
    loader = data.DeviceLoader(x, y, 64, mean=CIFAR_MEAN, std=CIFAR_STD, augment=False, shuffle=True, seed=0,
                               device=device, drop_last=True, channels_last=True)
    opt = build_optimizer(model, OPT)
    precision = devices.resolve_precision("auto", torch.device(device))
    amp = (lambda: devices.autocast(torch.device(device), precision)) if precision != "fp32" else None
    losses = []
    model.train()
    for epoch in range(25):
        for xb, yb in loader.batches(epoch):
            opt.zero_grad(set_to_none=True)
            ls, _ = accumulate_gradients(model, xb, yb, None, autocast=amp)
            opt.step()
            losses.append(ls / yb.shape[0])
    losses = [float(v) for v in losses]
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    ok = all(math.isfinite(v) for v in losses) and last < 0.7 * first
    log(f"training: loss {first:.3f} -> {last:.3f} over {len(losses)} steps ({precision}, channels_last): "
        f"{'ok' if ok else 'FAILED'}")
    return {"train_loss_first": first, "train_loss_last": last, "train_precision": precision, "train_ok": ok}


def _layers(n: int, nx: int, ny: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = max(4, nx // 8)
    z = rng.standard_normal((n, k))
    a = z @ rng.standard_normal((k, nx)) + 0.3 * rng.standard_normal((n, nx))
    b = np.tanh(z @ rng.standard_normal((k, ny))) + 0.3 * rng.standard_normal((n, ny))
    return a, b


def check_similarity(device, log, n: int = 5000, nx: int = 256, ny: int = 128) -> dict:
    a, b = _layers(n, nx, ny)
    ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
    c_cpu, c_dev = S.cca_coefficients(a, b), S.cca_coefficients(ta, tb)
    k_cpu, k_dev = S.linear_cka(a, b), S.linear_cka(ta, tb)
    d_cca = float(np.max(np.abs(np.asarray(c_dev) - c_cpu)))
    d_cka = abs(float(k_dev) - k_cpu)
    ok = d_cca <= 1e-8 and d_cka <= 1e-8
    log(f"similarity float64 {device} vs CPU ({n} x {nx} vs {ny}): CCA max diff {d_cca:.1e}, "
        f"CKA diff {d_cka:.1e}: {'ok' if ok else 'FAILED'}")
    return {"sim_cca_diff": d_cca, "sim_cka_diff": d_cka, "sim_ok": ok}


def check_curve(device, log) -> dict:
    torch.manual_seed(1)
    spec = {"name": "vgg16", "batch_norm": True, "width": 0.25}
    a = models.build_model(spec, 3, 10, 32)
    torch.manual_seed(2)
    b = models.build_model(spec, 3, 10, 32)
    module = models.build_model(spec, 3, 10, 32).to(device)
    sa = {k: v.to(device) for k, v in a.state_dict().items()}
    sb = {k: v.to(device) for k, v in b.state_dict().items()}
    curve = C.Curve(module, sa, sb, kind="bezier", num_bends=3).to(device)
    with torch.no_grad():
        curve.bends.add_(0.05 * torch.randn_like(curve.bends))
    ok = True
    for t, ref in ((0.0, sa), (1.0, sb)):
        w = curve.weights_at(t)
        for k, v in ref.items():
            if not torch.equal(w[k].detach(), v):
                ok = False
                log(f"curve: t={t} key {k} differs")
                break
    log(f"curve endpoints on {device}: weights_at(0) and weights_at(1) bit-exact: {'ok' if ok else 'FAILED'}")
    return {"curve_ok": ok}


# ----------------------------------------------------------------------------- data

def cifar_train(n_images: int | None, log, allow_zip: bool = True):
    if allow_zip:
        for cand in ZIP_CANDIDATES:
            p = (ROOT / cand).resolve()
            if p.exists():
                t0 = time.perf_counter()
                x, y, info = data.load_split("cifar10_jpeg", "train", root=p, cache_dir=None)
                if n_images:
                    x, y = x[:n_images], y[:n_images]
                src = f"CIFAR-10 train from {cand} ({len(x)} images, decoded in {time.perf_counter() - t0:.1f} s)"
                log(src)
                return x, y, info["mean"], info["std"], src
    n = n_images or 50_000
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    src = f"synthetic uint8 images of CIFAR shape ({n} images; no cifar10-jpeg.zip found)"
    log(src)
    return x, y, CIFAR_MEAN, CIFAR_STD, src


# ----------------------------------------------------------------------------- epochs

def plain_batches(x, y, mean, std, batch, workers, device):
    from bench.train_bench import _PilDataset

    ds = _PilDataset(x, y, mean, std)
    pin = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         pin_memory=pin, persistent_workers=workers > 0)
    return loader


def timed_epoch(step, batches_fn, n_batches: int, budget_s: float, device, warmup: int = 3) -> dict:
    """Time one epoch of ``step(x, y, i)``; stop at ``budget_s`` and extrapolate from the batches done."""
    it = batches_fn()
    done = 0
    for _ in range(warmup):  # not part of the timed epoch (first-call costs)
        try:
            xb, yb = next(it)
        except StopIteration:  # fewer batches than warm-up steps
            it = batches_fn()
            xb, yb = next(it)
        step(xb, yb, done)
    sync(device)
    it = batches_fn()        # the timed epoch starts with a fresh iterator (worker start-up included)
    t0 = time.perf_counter()
    n_img = 0
    for i, (xb, yb) in enumerate(it):
        step(xb, yb, i)
        n_img += yb.shape[0]
        done = i + 1
        if done >= n_batches:
            break
        if time.perf_counter() - t0 > budget_s:
            break
    sync(device)
    secs = time.perf_counter() - t0
    ips = n_img / secs
    return {"ips": ips, "epoch_s": n_batches * (n_img / done) / ips, "batches_timed": done,
            "extrapolated": done < n_batches}


def make_plain_step(model, device):
    opt = torch.optim.SGD(model.parameters(), lr=OPT["lr"], momentum=OPT["momentum"],
                          weight_decay=OPT["weight_decay"])
    model.train()

    def step(xb, yb, i):
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        loss.item()
    return step


def make_fast_step(model, device, precision, forward=None):
    opt = build_optimizer(model, OPT)
    amp = (lambda: devices.autocast(torch.device(device), precision)) if precision != "fp32" else None
    model.train()

    def step(xb, yb, i):
        opt.zero_grad(set_to_none=True)
        ls, _ = accumulate_gradients(model, xb, yb, None, autocast=amp, forward=forward)
        if (i + 1) % 8 == 0 and not math.isfinite(float(ls)):
            raise RuntimeError("loss diverged in the benchmark")
        opt.step()
    return step


def matmul_rate(device, n: int, reps: int = 10) -> float:
    """bf16 matmul FLOP/s of an n x n x n product (mean of ``reps`` after 3 warm-ups)."""
    dt = torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def vgg_epoch(device, args, clock: Clock, log) -> dict:
    res: dict = {}
    n = 512 if args.tiny else None
    x, y, mean, std, src = cifar_train(n, log, allow_zip=not (args.synthetic or args.tiny))
    res["data"] = src
    batch = args.batch
    n_batches = len(x) // batch
    spec = {"name": "vgg16", "batch_norm": False, "init": "paper"}
    if args.tiny:
        spec["width"] = 0.125
    torch.manual_seed(0)
    base = models.build_model(spec, 3, 10, 32)
    macs = models.count_macs(base, (3, 32, 32))
    res.update({"batch": batch, "images": len(x), "fwd_macs_per_image": macs,
                "train_flops_per_image": 6 * macs})
    peak = matmul_rate(device, 1024 if args.tiny else 8192)
    res["bf16_matmul_flops"] = peak
    log(f"VGG-16{' (width 1/8, tiny)' if args.tiny else ''}: {macs / 1e9:.3f} GMAC forward per image; "
        f"bf16 matmul {peak / 1e12:.1f} TFLOP/s")
    parts = 3 if not args.no_compile else 2
    box = max(clock.left() * 0.6 / parts, 5.0)

    # plain loop (fp32, per-image PIL transforms)
    model = copy.deepcopy(base).to(device)
    loader = plain_batches(x, y, mean, std, batch, args.workers, device)
    r = timed_epoch(make_plain_step(model, device), lambda: iter(loader), n_batches, box, device)
    res["plain"] = r
    log(f"plain loop: {r['ips']:.0f} img/s, epoch {r['epoch_s']:.1f} s"
        f"{' (extrapolated from %d batches)' % r['batches_timed'] if r['extrapolated'] else ''}")
    del model, loader

    # fast path
    precision = "bf16" if torch.device(device).type == "cuda" or args.tiny else "fp32"
    dl = data.DeviceLoader(x, y, batch, mean=mean, std=std, augment=True, shuffle=True, seed=0, device=device,
                           drop_last=True, channels_last=True)
    model = copy.deepcopy(base).to(device).to(memory_format=torch.channels_last)
    r = timed_epoch(make_fast_step(model, device, precision), lambda: dl.batches(0), n_batches, box, device)
    res["fast"] = r
    log(f"fast path ({precision}, channels_last, GPU data): {r['ips']:.0f} img/s, epoch {r['epoch_s']:.1f} s")
    del model
    if args.big_batch and args.big_batch != batch and clock.left() > 60:
        # the same fast path at a larger batch: what the GPU can do when launch overheads shrink
        dlb = data.DeviceLoader(x, y, args.big_batch, mean=mean, std=std, augment=True, shuffle=True, seed=0,
                                device=device, drop_last=True, channels_last=True)
        model = copy.deepcopy(base).to(device).to(memory_format=torch.channels_last)
        try:
            r = timed_epoch(make_fast_step(model, device, precision), lambda: dlb.batches(0), len(dlb), box, device)
            res["fast_big"] = dict(r, batch=args.big_batch, mfu=r["ips"] * 6 * macs / peak)
            log(f"fast path at batch {args.big_batch}: {r['ips']:.0f} img/s, epoch {r['epoch_s']:.1f} s")
        except Exception as exc:  # e.g. out of memory: the main figures stand without it
            res["fast_big_error"] = f"{type(exc).__name__}: {exc}"
            log(f"fast path at batch {args.big_batch} failed: {res['fast_big_error']}")
        del model, dlb

    # fast path + torch.compile, if there is time for it
    if args.no_compile:
        res["compile_note"] = "skipped (--no-compile)"
    elif clock.left() < args.compile_min_s:
        res["compile_note"] = f"skipped: {clock.left():.0f} s left < {args.compile_min_s} s needed"
    else:
        model = copy.deepcopy(base).to(device).to(memory_format=torch.channels_last)
        try:
            forward = torch.compile(model)
            step = make_fast_step(model, device, precision, forward=forward)
            t0 = time.perf_counter()
            it = dl.batches(1)
            for i in range(3):
                xb, yb = next(it)
                step(xb, yb, i)
            sync(device)
            res["compile_s"] = time.perf_counter() - t0
            box = max(min(box, clock.left() - 30), 5.0)
            r = timed_epoch(step, lambda: dl.batches(0), n_batches, box, device)
            res["fast_compile"] = r
            log(f"fast path + torch.compile: {r['ips']:.0f} img/s, epoch {r['epoch_s']:.1f} s "
                f"(compiled in {res['compile_s']:.0f} s)")
        except Exception as exc:  # no compiler toolchain, etc.
            res["compile_note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            log(f"torch.compile {res['compile_note']}")
        del model
    best = max((res[k]["ips"], k) for k in ("fast", "fast_compile") if k in res)
    res["best_fast"] = best[1]
    res["speedup"] = best[0] / res["plain"]["ips"]
    res["mfu"] = best[0] * 6 * macs / peak
    return res


# ----------------------------------------------------------------------------- similarity speed

def similarity_speed(device, args, log) -> dict:
    n, nx = (5000, 64) if args.tiny else (50_000, 512)
    a, b = _layers(n, nx, nx, seed=1)
    ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
    out = {"shape": f"{nx} x {n}"}

    def timed(fn, dev):
        fn()  # warm-up (cuBLAS/cuSOLVER handles)
        sync(dev)
        t0 = time.perf_counter()
        v = fn()
        sync(dev)
        return v, time.perf_counter() - t0

    c_cpu, t_cpu = timed(lambda: S.cca_coefficients(a, b), "cpu")
    c_dev, t_dev = timed(lambda: S.cca_coefficients(ta, tb), device)
    c32_cpu, t32_cpu = timed(lambda: S.cca_coefficients(a, b, products="float32"), "cpu")
    c32_dev, t32_dev = timed(lambda: S.cca_coefficients(ta, tb, products="float32"), device)
    k_cpu, tk_cpu = timed(lambda: S.linear_cka(a, b), "cpu")
    k_dev, tk_dev = timed(lambda: S.linear_cka(ta, tb), device)
    out.update({
        "cca_f64_cpu_s": t_cpu, "cca_f64_gpu_s": t_dev, "cca_f64_diff": float(np.max(np.abs(np.asarray(c_dev) - c_cpu))),
        "cca_f32_cpu_s": t32_cpu, "cca_f32_gpu_s": t32_dev,
        "cca_f32_diff": float(np.max(np.abs(np.asarray(c32_dev) - c_cpu))),
        "cka_cpu_s": tk_cpu, "cka_gpu_s": tk_dev, "cka_diff": abs(float(k_dev) - k_cpu),
        "cpu_threads": torch.get_num_threads()})
    log(f"similarity {out['shape']}: CCA f64 CPU {t_cpu:.2f} s vs {device} {t_dev:.3f} s; "
        f"f32 products {t32_cpu:.2f} s vs {t32_dev:.3f} s; CKA {tk_cpu:.2f} s vs {tk_dev:.3f} s")
    return out


# ----------------------------------------------------------------------------- report

def markdown(res: dict) -> str:
    L = [f"# GPU check ({res['device_name']}, torch {res['torch']}, {res['utc']})", ""]
    if res.get("tiny"):
        L += ["**Tiny CPU smoke run: code paths only, the numbers mean nothing.**", ""]
    L += ["| part | figure | value | target | met? |", "| --- | --- | --- | --- | --- |"]
    ok = lambda b: "yes" if b else "**NO**"  # noqa: E731
    c = res.get("correctness", {})
    if c:
        L.append(f"| correctness | training loss (fast path, {c.get('train_precision')}) first 10 -> last 10 steps | "
                 f"{c['train_loss_first']:.3f} -> {c['train_loss_last']:.3f} | falls (< 0.7x) | {ok(c['train_ok'])} |")
        L.append(f"| correctness | similarity GPU vs CPU float64, max abs diff (CCA / CKA) | "
                 f"{c['sim_cca_diff']:.1e} / {c['sim_cka_diff']:.1e} | <= 1e-8 | {ok(c['sim_ok'])} |")
        L.append(f"| correctness | curve endpoints on GPU bit-exact | {c['curve_ok']} | exact | {ok(c['curve_ok'])} |")
    v = res.get("vgg")
    if v:
        def ep(r):
            return f"{r['epoch_s']:.2f} s ({r['ips']:.0f} img/s{', extrapolated' if r['extrapolated'] else ''})"
        L.append(f"| VGG-16 epoch | data | {v['data']} | | |")
        L.append(f"| VGG-16 epoch | plain loop (DataLoader, {res['workers']} workers, PIL per image, fp32), batch {v['batch']} | {ep(v['plain'])} | | |")
        L.append(f"| VGG-16 epoch | fast path (GPU data, bf16, channels_last) | {ep(v['fast'])} | | |")
        if "fast_compile" in v:
            L.append(f"| VGG-16 epoch | fast path + torch.compile (compile {v['compile_s']:.0f} s, not counted) | "
                     f"{ep(v['fast_compile'])} | | |")
        else:
            L.append(f"| VGG-16 epoch | fast path + torch.compile | {v.get('compile_note', 'not run')} | | |")
        L.append(f"| VGG-16 epoch | speed-up, best fast ({v['best_fast']}) / plain | {v['speedup']:.2f}x | >= 5x | "
                 f"{ok(v['speedup'] >= 5)} |")
        L.append(f"| VGG-16 epoch | MFU = img/s x 6 x {v['fwd_macs_per_image'] / 1e9:.3f} GMAC / bf16 matmul "
                 f"{v['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s | {100 * v['mfu']:.1f} % | >= 30 % | {ok(v['mfu'] >= 0.30)} |")
        if "fast_big" in v:
            b = v["fast_big"]
            L.append(f"| VGG-16 epoch | fast path at batch {b['batch']} (information: speed-up and MFU above use "
                     f"batch {v['batch']}) | {ep(b)}, MFU {100 * b['mfu']:.1f} % | | |")
    s = res.get("similarity")
    if s:
        L.append(f"| similarity {s['shape']} | CCA float64: CPU ({s['cpu_threads']} threads) / GPU | "
                 f"{s['cca_f64_cpu_s']:.2f} s / {s['cca_f64_gpu_s']:.3f} s = {s['cca_f64_cpu_s'] / s['cca_f64_gpu_s']:.1f}x "
                 f"(diff {s['cca_f64_diff']:.1e}) | | |")
        L.append(f"| similarity {s['shape']} | CCA float32 products: CPU / GPU | "
                 f"{s['cca_f32_cpu_s']:.2f} s / {s['cca_f32_gpu_s']:.3f} s = {s['cca_f32_cpu_s'] / s['cca_f32_gpu_s']:.1f}x "
                 f"(diff to f64 {s['cca_f32_diff']:.1e}) | | |")
        L.append(f"| similarity {s['shape']} | linear CKA: CPU / GPU | {s['cka_cpu_s']:.3f} s / {s['cka_gpu_s']:.4f} s "
                 f"(diff {s['cka_diff']:.1e}) | | |")
    for k in ("errors",):
        for e in res.get(k, []):
            L.append(f"| error | {e} | | | |")
    L += ["", f"Wall time of the whole check: {res['wall_s']:.0f} s (budget {res['budget_s']:.0f} s)."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: smoke test)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny sizes (512 synthetic images, VGG width 1/8): code paths only")
    ap.add_argument("--budget-s", type=float, default=420.0, help="time box of the whole check")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers of the plain loop")
    ap.add_argument("--big-batch", type=int, default=512, help="also time the fast path at this batch (0: no)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-min-s", type=float, default=200.0,
                    help="try torch.compile only with at least this many seconds left")
    ap.add_argument("--synthetic", action="store_true", help="synthetic images even when the CIFAR zip is there")
    ap.add_argument("--skip", nargs="*", default=[], choices=["vgg", "similarity"])
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA: torch {torch.__version__} sees no CUDA device; nothing measured "
              "(run on a GPU machine, or `--device cpu --tiny` for a smoke test of the script)")
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # the plain loop is fp32 as reference scripts run it
    if device.type == "cpu":
        torch.set_num_threads(1)   # smoke test on a shared CPU: one thread, no oversubscription
    clock = Clock(a.budget_s)
    lines: list[str] = []

    def log(msg: str) -> None:
        msg = f"[{time.perf_counter() - clock.t0:6.1f}s] {msg}"
        print(msg, flush=True)
        lines.append(msg)

    res: dict = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                 "torch": torch.__version__, "utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "tiny": a.tiny, "workers": a.workers, "budget_s": a.budget_s, "errors": []}
    corr: dict = {}
    corr.update(check_training(device, log))
    corr.update(check_similarity(device, log, *((2000, 64, 32) if a.tiny else (5000, 256, 128))))
    corr.update(check_curve(device, log))
    res["correctness"] = corr
    failed = not (corr["train_ok"] and corr["sim_ok"] and corr["curve_ok"])
    if failed:
        log("a correctness check failed: no speed measured")
    else:
        if "vgg" not in a.skip:
            try:
                res["vgg"] = vgg_epoch(device, a, clock, log)
            except Exception as exc:
                res["errors"].append(f"VGG-16 epoch: {type(exc).__name__}: {exc}")
                log(res["errors"][-1])
        if "similarity" not in a.skip:
            if clock.left() > (10 if a.tiny else 60):
                try:
                    res["similarity"] = similarity_speed(device, a, log)
                except Exception as exc:
                    res["errors"].append(f"similarity: {type(exc).__name__}: {exc}")
                    log(res["errors"][-1])
            else:
                res["errors"].append("similarity speed skipped: out of time")
    res["wall_s"] = time.perf_counter() - clock.t0
    md = markdown(res)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "results" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    from closerlook.io import atomic_write_json, atomic_write_text

    atomic_write_text(out_dir / "gpu_check.md", md + "\n## Log\n\n```\n" + "\n".join(lines) + "\n```\n")
    atomic_write_json(out_dir / "gpu_check.json", res)
    print(md)
    print(f"written: {out_dir / 'gpu_check.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
