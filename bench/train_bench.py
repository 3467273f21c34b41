"""Training-throughput benchmark: the engine's loop vs a plain reference loop.

Both sides train the same model (same initial weights), on the same images,
with the same batch size, SGD (momentum 0.9, wd 5e-4), on the CPU:

- ``plain``: what reference implementations do: a torchvision-style
  ``Dataset`` whose ``__getitem__`` turns each uint8 image into a PIL image and
  applies ``RandomCrop(size, padding=4) + RandomHorizontalFlip + ToTensor +
  Normalize`` per image, a ``torch.utils.data.DataLoader`` (shuffle,
  ``num_workers=0``: on these shared 2-core machines a worker process competes
  with the training thread), ``zero_grad()``, forward, cross-entropy,
  backward, step, ``loss.item()``.
- ``engine``: :class:`closerlook.data.DeviceLoader` (whole set as a uint8
  tensor, batched crop+flip, normalisation on the fly) and the per-step code of
  :func:`closerlook.train.train_run` (``zero_grad(set_to_none=True)``,
  :func:`closerlook.train.accumulate_gradients`, finiteness check, step,
  per-iteration scheduler step); optional channels_last, bf16 autocast,
  torch.compile.

Models: ``small_cnn`` on Fashion-MNIST (28x28x1, real images) and ``vgg16`` on
CIFAR-shaped 32x32x3 images (random uint8 images: throughput does not depend
on the pixels, and decoding the CIFAR JPEG zip would cost more than the bench).

Usage: ``python -m bench.train_bench [--steps 60] [--vgg-steps 6] [--threads 1] [--quick]``.
``run()`` returns a flat dict: ``train_ips_<model>_<variant>`` and
``train_ratio_<model>[_<variant>]`` (engine variant / plain, both fp32 unless named).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from closerlook import data, devices, models, schedules
from closerlook.train import accumulate_gradients, build_optimizer

OPT = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False, "dampening": 0.0}
# A variant whose first timed step is this many times slower than the fp32 engine's is not timed
# further (on a CPU without native bf16, autocast ran at 0.1x: VGG-16 rows would take hours).
SLOW_FACTOR = 3.0


def bf16_support() -> tuple[bool, str]:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX on x86, the bf16 feature on Arm)."""
    try:
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return True, "native bf16 (AVX512-BF16/AMX)"
    except AttributeError:  # a torch without these probes: fall back to the kernel's flags
        pass
    try:
        flags = {f for line in open("/proc/cpuinfo") if line.lower().startswith(("flags", "features"))
                 for f in line.split(":", 1)[1].split()}
    except OSError:
        flags = set()
    if flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        return True, "native bf16 (cpu flags)"
    return False, "this CPU has no native bf16 (no avx512_bf16 / amx_bf16 / bf16 flag): autocast would be emulated"


class _PilDataset(torch.utils.data.Dataset):
    """Per-image PIL transforms, as torchvision reference training scripts do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        import torchvision.transforms as T

        self.images = images.numpy()
        self.labels = labels.tolist()
        size = images.shape[-1]
        self.gray = images.shape[1] == 1
        self.tf = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        a = self.images[i]
        img = Image.fromarray(a[0] if self.gray else a.transpose(1, 2, 0))
        return self.tf(img), self.labels[i]


def _data(model_name: str, n: int):
    if model_name == "small_cnn":
        x, y, info = data.load_split("fashion_mnist", "train", cache_dir=os.environ.get("CLOSERLOOK_DATA_CACHE",
                                                                                      "resources/data"))
        idx = data.stratified_subset(y, n // info["num_classes"], 0)
        return x[idx], y[idx], info, "fashion_mnist"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    info = {"in_channels": 3, "num_classes": 10, "image_size": 32,
            "mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}
    return x, y, info, "random uint8 (CIFAR shape)"


def _model(model_name: str, info) -> nn.Module:
    torch.manual_seed(0)
    return models.build_model({"name": model_name}, info["in_channels"], info["num_classes"], info["image_size"])


def plain_steps(model: nn.Module, x, y, info, batch: int):
    """Generator: one plain-loop training step per ``next()``, yielding the batch size."""
    ds = _PilDataset(x, y, info["mean"], info["std"])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    opt = build_optimizer(model, OPT)
    model.train()
    while True:
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            loss.item()
            yield yb.shape[0]


def engine_steps(model: nn.Module, x, y, info, batch: int, *, precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False):
    """Generator: one step of the engine's loop per ``next()``, yielding the batch size."""
    device = torch.device("cpu")
    loader = data.DeviceLoader(x, y, batch, mean=info["mean"], std=info["std"], augment=True, shuffle=True,
                               seed=0, device=device, drop_last=True, channels_last=channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile else model
    opt = build_optimizer(model, OPT)
    sched = schedules.make_scheduler(opt, {"optimizer": OPT, "schedule": {"name": "constant"}}, len(loader), 10 ** 6)
    amp = (lambda: devices.autocast(device, precision)) if precision != "fp32" else None
    model.train()
    epoch = 0
    while True:
        for xb, yb in loader.batches(epoch):
            opt.zero_grad(set_to_none=True)
            ls, _ = accumulate_gradients(model, xb, yb, None, autocast=amp, forward=forward)
            if not math.isfinite(float(ls)):
                raise RuntimeError("loss diverged in the benchmark")
            opt.step()
            sched.step()
            yield yb.shape[0]
        epoch += 1


def interleaved(loops: dict, steps: int, rounds: int, warmup: int = 2) -> dict:
    """Images/s of each loop, timed in ``rounds`` interleaved slices of ``steps // rounds`` steps
    (so a change in machine load hits every loop alike)."""
    for gen in loops.values():
        for _ in range(warmup):
            next(gen)
    per = max(steps // rounds, 1)
    imgs = {k: 0 for k in loops}
    secs = {k: 0.0 for k in loops}
    for _ in range(rounds):
        for k, gen in loops.items():
            t0 = time.perf_counter()
            n = sum(next(gen) for _ in range(per))
            secs[k] += time.perf_counter() - t0
            imgs[k] += n
    return {k: imgs[k] / secs[k] for k in loops}


def _drop_slow(loops: dict, out: dict, name: str) -> None:
    """Time one step of every loop; drop (and record) variants SLOW_FACTOR x slower than the fp32 engine."""
    step_s = {}
    for k, gen in loops.items():
        next(gen)  # first call: allocations, lazy init
        t0 = time.perf_counter()
        next(gen)
        step_s[k] = time.perf_counter() - t0
    for k in [k for k in loops if k not in ("plain", "engine")]:
        factor = step_s[k] / step_s["engine"]
        if factor > SLOW_FACTOR:
            del loops[k]
            out.setdefault("skipped", {})[f"train_ratio_{name}_{k.removeprefix('engine_')}"] = (
                f"one step took {factor:.1f}x the fp32 engine's (> {SLOW_FACTOR}x): not timed further")


def run(steps: int = 60, vgg_steps: int = 6, batch: int = 128, threads: int | None = 1,
        variants: tuple[str, ...] = ("cl", "bf16"), try_compile: bool = False, models_: tuple[str, ...] = ("small_cnn", "vgg16"),
        verbose: bool = True) -> dict:
    if threads:
        torch.set_num_threads(threads)
    out: dict = {"threads": torch.get_num_threads(), "batch": batch}
    rows = []
    for name in models_:
        n_steps = steps if name == "small_cnn" else vgg_steps
        x, y, info, source = _data(name, max(batch * 20, 1000))
        base = _model(name, info)
        loops = {"plain": plain_steps(copy.deepcopy(base), x, y, info, batch),
                 "engine": engine_steps(copy.deepcopy(base), x, y, info, batch)}
        if "cl" in variants:
            loops["engine_cl"] = engine_steps(copy.deepcopy(base), x, y, info, batch, channels_last=True)
        bf16 = "bf16" in variants and bf16_support()[0]
        if "bf16" in variants and not bf16:
            for k in ("bf16", "cl_bf16") if "cl" in variants else ("bf16",):
                out.setdefault("skipped", {})[f"train_ratio_{name}_{k}"] = bf16_support()[1]
        if bf16:
            loops["engine_bf16"] = engine_steps(copy.deepcopy(base), x, y, info, batch, precision="bf16")
        if "cl" in variants and bf16:
            loops["engine_cl_bf16"] = engine_steps(copy.deepcopy(base), x, y, info, batch, precision="bf16",
                                                   channels_last=True)
        if try_compile:
            try:
                gen = engine_steps(copy.deepcopy(base), x, y, info, batch, compile=True)
                for _ in range(3):
                    next(gen)  # compilation happens here, outside the timing
                loops["engine_compile"] = gen
            except Exception as exc:  # no toolchain
                out[f"compile_error_{name}"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        _drop_slow(loops, out, name)
        res = interleaved(loops, n_steps, rounds=min(5, n_steps))
        plain = res["plain"]
        for k, v in res.items():
            out[f"train_ips_{name}_{k}"] = round(v, 1)
            if k == "engine":
                out[f"train_ratio_{name}"] = round(v / plain, 3)
            elif k != "plain":
                out[f"train_ratio_{name}_{k.removeprefix('engine_')}"] = round(v / plain, 3)
            rows.append((name, k, v, v / plain, source))
    if verbose:
        for key, why in (out.get("skipped") or {}).items():
            print(f"skipped {key}: {why}")
        print(f"training images/s on CPU, batch {batch}, {out['threads']} thread(s)")
        print(f"{'model':<10} {'loop':<16} {'img/s':>8} {'vs plain':>9}  data")
        for name, k, v, r, src in rows:
            print(f"{name:<10} {k:<16} {v:8.1f} {r:8.2f}x  {src}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.train_bench")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per loop for small_cnn")
    ap.add_argument("--vgg-steps", type=int, default=6, help="timed steps per loop for vgg16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (needs a C++ compiler)")
    ap.add_argument("--quick", action="store_true", help="small_cnn only")
    ap.add_argument("--json", help="write the result dict here")
    a = ap.parse_args(argv)
    res = run(a.steps, a.vgg_steps, a.batch, a.threads, try_compile=a.compile,
              models_=("small_cnn",) if a.quick else ("small_cnn", "vgg16"))
    print(json.dumps(res, indent=1, sort_keys=True))
    if a.json:
        from closerlook.io import atomic_write_json
        atomic_write_json(a.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
