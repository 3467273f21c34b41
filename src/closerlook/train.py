"""Training engine: one run spec (docs/DESIGN.md) -> one run directory.

``train_run(spec, out_dir)`` trains with SGD/Adam, a per-iteration schedule
(:mod:`closerlook.schedules`) times linear warmup, optional freezing of named
parameter groups for the first K iterations, true large batches or gradient
accumulation (``micro_batch_size``), optional Hinton distillation, and writes

- ``epoch{E}.pt`` / ``iter{I}.pt`` (iteration 0 = initialisation) / ``final.pt``
  via :func:`closerlook.io.save_checkpoint`;
- ``metrics.csv`` (one row per epoch), ``status.json`` (written last);
- ``resume.pt`` (model, optimizer, scheduler, RNG, data position, metrics so
  far), rewritten atomically every ``resume_every`` iterations and at every
  epoch end, removed once the run is complete.

A killed run restarted with the same spec continues from ``resume.pt``; on CPU
the final weights are bitwise identical to an uninterrupted run (the data order
and augmentation of an epoch depend only on (seed, epoch), the lr is a closed
form of the iteration, and the RNG state is saved). Checkpoints already on
disk are never rewritten.

A NaN/inf training loss (or non-finite weights at a checkpoint) stops the run
as ``diverged``: every promised checkpoint not yet written is written with
``model: None``, metrics and status are written, and the process exits 0.

Gradient accumulation note: with ``micro_batch_size`` the gradient equals the
true large-batch gradient (loss of each micro-batch divided by the number of
micro-batches) for models without batch norm. With batch norm the batch
statistics (and the running-statistics updates) are those of each
micro-batch, so an accumulated run is *not* the same as a true large batch:
use a true batch (no ``micro_batch_size``) where memory allows.

CLI: ``python -m closerlook.train --spec run.yaml --out DIR [--set key=value ...]``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io as _io
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import devices, schedules
from .io import (CheckpointError, ConfigError, check_keys, atomic_torch_save, atomic_write_json, atomic_write_text,
                 load_checkpoint, safe_torch_load, save_checkpoint)

RESUME_FORMAT = "closerlook-resume/1"
METRICS_COLUMNS = ["epoch", "iteration", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                   "wall_s", "images_per_s", "status"]

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "data": {"name": "fashion_mnist", "root": None, "cache_dir": None, "train_per_class": None,
             "test_per_class": None, "subset_seed": 0},
    "model": {"name": "small_cnn"},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "schedule": {"name": "constant"},
    "warmup": {"iterations": 0, "start_factor": 0.0},
    "epochs": 1,
    "batch_size": 50,
    "micro_batch_size": None,
    "augment": True,
    "freeze": None,
    "distill": None,
    "checkpoints": {"epochs": [], "iterations": []},
    "eval_every": 1,
    "eval_batch_size": 1000,
    "resume_every": 50,
    "device": "auto",
    "precision": "auto",
    "channels_last": False,
    "compile": False,
    "threads": None,
}
DATA_KEYS = {"name", "root", "cache_dir", "train_per_class", "test_per_class", "subset_seed", "probe_size"}
OPTIMIZER_KEYS = {"sgd": {"name", "lr", "momentum", "weight_decay", "nesterov", "dampening"},
                  "adam": {"name", "lr", "betas", "eps", "weight_decay", "amsgrad"}}
OPTIMIZER_DEFAULTS = {"sgd": {"momentum": 0.0, "weight_decay": 0.0, "nesterov": False, "dampening": 0.0},
                      "adam": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}}
FREEZE_KEYS = {"groups", "iterations"}
DISTILL_KEYS = {"teacher", "temperature", "alpha"}
CHECKPOINT_KEYS = {"epochs", "iterations"}
# Training-set sizes (images per class, classes) of the built-in sets, for checking
# checkpoint iterations before any data is loaded; other sets are checked at run time.
_KNOWN_TRAIN = {"fashion_mnist": (6000, 10), "cifar10": (5000, 10), "cifar10_jpeg": (5000, 10)}
_FALLBACK_DATASETS = ("cifar10", "fashion_mnist", "imagefolder", "cifar10_jpeg")
_FALLBACK_MODELS = ("small_cnn", "vgg11", "vgg16", "resnet18")


# ----------------------------------------------------------------------------- spec validation

def _merge(base: Mapping, over: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = copy.deepcopy(v)
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _dataset_names() -> tuple[str, ...]:
    try:
        from . import data
        return tuple(data.DATASET_NAMES)
    except Exception:  # data.py missing or broken: fall back to the documented names
        return _FALLBACK_DATASETS


def _model_names() -> tuple[str, ...]:
    try:
        from . import models
        for attr in ("MODEL_NAMES", "MODELS", "ARCHITECTURES"):
            names = getattr(models, attr, None)
            if names:
                return tuple(names)
    except Exception:
        pass
    return _FALLBACK_MODELS


def iters_per_epoch_for(spec: Mapping, n_train: int) -> int:
    """Optimizer steps per epoch (partial last batches are dropped)."""
    return int(n_train) // int(spec["batch_size"])


def validate_run_spec(spec: Mapping) -> dict:
    """Check a run spec; return it completed with defaults. Raises ConfigError naming the key."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"run spec: must be a mapping, got {type(spec).__name__}")
    unknown = set(spec) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown run-spec key (allowed: {', '.join(sorted(DEFAULTS))})")
    s = _merge(DEFAULTS, spec)
    _coerce_numbers(s)
    for key in ("data", "model", "optimizer"):
        if not isinstance(s[key], Mapping):
            raise ConfigError(f"{key}: must be a mapping, got {s[key]!r}")
    s["data"] = _merge(DEFAULTS["data"], s["data"])
    if not isinstance(s["name"], str) or not re.fullmatch(r"[A-Za-z0-9_-]+", s["name"]):
        raise ConfigError(f"name: {s['name']!r} must match [A-Za-z0-9_-]+")
    if not _is_int(s["seed"]) or s["seed"] < 0:
        raise ConfigError(f"seed: {s['seed']!r} must be a non-negative integer")

    d = s["data"]
    check_keys(d, DATA_KEYS, "data")
    if d["name"] not in _dataset_names():
        raise ConfigError(f"data.name: unknown data set {d['name']!r}; known: {', '.join(_dataset_names())}")
    for k in ("train_per_class", "test_per_class"):
        if d[k] is not None and (not _is_int(d[k]) or d[k] < 1):
            raise ConfigError(f"data.{k}: {d[k]!r} must be a positive integer or null")
    if not _is_int(d["subset_seed"]):
        raise ConfigError(f"data.subset_seed: {d['subset_seed']!r} must be an integer")

    m = s["model"]
    if m.get("name") not in _model_names():
        raise ConfigError(f"model.name: unknown model {m.get('name')!r}; known: {', '.join(_model_names())}")
    try:
        from . import models
        check = getattr(models, "validate_model_spec", None) or getattr(models, "_normalise_spec", None)
        if check is not None:
            check(m)
    except ConfigError:
        raise
    except Exception:
        pass

    o = s["optimizer"]
    oname = o.get("name")
    if oname not in OPTIMIZER_KEYS:
        raise ConfigError(f"optimizer.name: unknown optimizer {oname!r}; choose sgd or adam")
    check_keys(o, OPTIMIZER_KEYS[oname], "optimizer", f" for {oname}")
    s["optimizer"] = o = _merge(OPTIMIZER_DEFAULTS[oname], o)
    if "lr" not in o or not _is_num(o["lr"]) or o["lr"] <= 0:
        raise ConfigError(f"optimizer.lr: {o.get('lr')!r} must be a number > 0")
    if not _is_num(o["weight_decay"]) or o["weight_decay"] < 0:
        raise ConfigError(f"optimizer.weight_decay: {o['weight_decay']!r} must be >= 0")
    if oname == "sgd":
        if not _is_num(o["momentum"]) or not 0 <= o["momentum"] < 1:
            raise ConfigError(f"optimizer.momentum: {o['momentum']!r} must be in [0, 1)")
        if not isinstance(o["nesterov"], bool):
            raise ConfigError(f"optimizer.nesterov: {o['nesterov']!r} must be true or false")
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            raise ConfigError("optimizer.nesterov: needs momentum > 0 and dampening 0")
    else:
        b = o["betas"]
        if not isinstance(b, (list, tuple)) or len(b) != 2 or not all(_is_num(x) and 0 <= x < 1 for x in b):
            raise ConfigError(f"optimizer.betas: {b!r} must be two numbers in [0, 1)")
        if not _is_num(o["eps"]) or o["eps"] <= 0:
            raise ConfigError(f"optimizer.eps: {o['eps']!r} must be > 0")

    if not _is_int(s["epochs"]) or s["epochs"] <= 0:
        raise ConfigError(f"epochs: {s['epochs']!r} must be a positive integer")
    if not _is_int(s["batch_size"]) or s["batch_size"] <= 0:
        raise ConfigError(f"batch_size: {s['batch_size']!r} must be a positive integer")
    mb = s["micro_batch_size"]
    if mb is not None:
        if not _is_int(mb) or mb <= 0:
            raise ConfigError(f"micro_batch_size: {mb!r} must be a positive integer or null")
        if s["batch_size"] % mb:
            raise ConfigError(f"micro_batch_size: batch_size {s['batch_size']} is not divisible by micro_batch_size {mb}")

    if s["warmup"] is None:
        s["warmup"] = dict(DEFAULTS["warmup"])
    if s["schedule"] is None:
        s["schedule"] = {"name": "constant"}
    schedules.validate_schedule(s["schedule"], s["warmup"], epochs=s["epochs"], base_lr=float(o["lr"]))
    s["warmup"] = _merge(DEFAULTS["warmup"], s["warmup"])

    for k in ("augment", "channels_last", "compile"):
        if not isinstance(s[k], bool):
            raise ConfigError(f"{k}: {s[k]!r} must be true or false")
    for k in ("eval_every", "eval_batch_size", "resume_every"):
        if not _is_int(s[k]) or s[k] <= 0:
            raise ConfigError(f"{k}: {s[k]!r} must be a positive integer")
    devices.check_device_name(s["device"])
    if s["precision"] not in devices.PRECISIONS:
        raise ConfigError(f"precision: {s['precision']!r} is not one of {', '.join(devices.PRECISIONS)}")
    if s["threads"] is not None and (not _is_int(s["threads"]) or s["threads"] < 1):
        raise ConfigError(f"threads: {s['threads']!r} must be a positive integer or null")

    # checkpoints
    c = s["checkpoints"] if s["checkpoints"] is not None else {}
    if not isinstance(c, Mapping):
        raise ConfigError(f"checkpoints: must be a mapping {{epochs, iterations}}, got {c!r}")
    check_keys(c, CHECKPOINT_KEYS, "checkpoints")
    c = {"epochs": list(c.get("epochs") or []), "iterations": list(c.get("iterations") or [])}
    for e in c["epochs"]:
        if not _is_int(e) or e < 0:
            raise ConfigError(f"checkpoints.epochs: {e!r} must be a non-negative integer")
        if e > s["epochs"]:
            raise ConfigError(f"checkpoints.epochs: epoch {e} is beyond epochs ({s['epochs']})")
    for i in c["iterations"]:
        if not _is_int(i) or i < 0:
            raise ConfigError(f"checkpoints.iterations: {i!r} must be a non-negative integer")
    c["epochs"] = sorted(set(c["epochs"]))
    c["iterations"] = sorted(set(c["iterations"]))
    s["checkpoints"] = c
    known = _KNOWN_TRAIN.get(d["name"])
    if known is not None:
        per, ncls = known
        n = ncls * (min(d["train_per_class"], per) if d["train_per_class"] else per)
        ipe = iters_per_epoch_for(s, n)
        if ipe < 1:
            raise ConfigError(f"batch_size: {s['batch_size']} is larger than the training set ({n} images)")
        _check_iterations(c["iterations"], ipe * s["epochs"])

    # freezing
    fr = s["freeze"]
    if fr is not None:
        if not isinstance(fr, Mapping):
            raise ConfigError(f"freeze: must be a mapping {{groups, iterations}} or null, got {fr!r}")
        check_keys(fr, FREEZE_KEYS, "freeze")
        g = fr.get("groups")
        if isinstance(g, str):
            g = [g]
        if not isinstance(g, (list, tuple)) or not g or not all(isinstance(x, str) and x for x in g):
            raise ConfigError(f"freeze.groups: {fr.get('groups')!r} must be a non-empty list of group names")
        it = fr.get("iterations")
        if not _is_int(it) or it < 0:
            raise ConfigError(f"freeze.iterations: {it!r} must be a non-negative integer")
        s["freeze"] = {"groups": list(g), "iterations": it}
        _check_freeze_groups_meta(s)

    # distillation
    di = s["distill"]
    if di is not None:
        if not isinstance(di, Mapping):
            raise ConfigError(f"distill: must be a mapping {{teacher, temperature, alpha}} or null, got {di!r}")
        check_keys(di, DISTILL_KEYS, "distill")
        if not isinstance(di.get("teacher"), (str, os.PathLike)) or not str(di.get("teacher")):
            raise ConfigError(f"distill.teacher: {di.get('teacher')!r} must be a checkpoint path")
        t = di.get("temperature", 4.0)
        if not _is_num(t) or t <= 0:
            raise ConfigError(f"distill.temperature: {t!r} must be a number > 0")
        a = di.get("alpha", 0.9)
        if not _is_num(a) or not 0 <= a <= 1:
            raise ConfigError(f"distill.alpha: {a!r} must be in [0, 1]")
        s["distill"] = {"teacher": str(di["teacher"]), "temperature": float(t), "alpha": float(a)}
    return s


_FLOAT_KEYS = {"optimizer": ("lr", "momentum", "weight_decay", "eps", "dampening"),
               "schedule": ("lr_min", "gamma", "final_factor", "T0", "Tmult"),
               "warmup": ("start_factor",), "distill": ("temperature", "alpha")}
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _coerce_numbers(s: dict) -> None:
    """YAML 1.1 (yaml.safe_load) reads ``1e-3`` as a string: turn such strings into floats."""
    for sect, keys in _FLOAT_KEYS.items():
        d = s.get(sect)
        if isinstance(d, dict):
            for k in keys:
                v = d.get(k)
                if isinstance(v, str) and _FLOAT_RE.match(v.strip()):
                    d[k] = float(v)
    o = s.get("optimizer")
    if isinstance(o, dict) and isinstance(o.get("betas"), (list, tuple)):
        o["betas"] = [float(b) if isinstance(b, str) and _FLOAT_RE.match(b.strip()) else b for b in o["betas"]]


def _check_iterations(iterations, total: int) -> None:
    for i in iterations:
        if i > total:
            raise ConfigError(f"checkpoints.iterations: iteration {i} is beyond the run's {total} iterations")


def _check_freeze_groups_meta(s: Mapping) -> None:
    """Resolve freeze groups on a parameter-free (meta-device) model when the model code allows."""
    try:
        from . import data, models
        info = data.dataset_info(s["data"]["name"]) if s["data"]["name"] != "imagefolder" else None
        if info is None:
            return
        with torch.device("meta"):
            model = models.build_model(s["model"], info["in_channels"], info["num_classes"], info["image_size"])
    except ConfigError:
        raise
    except Exception:
        return  # checked again at run time on the real model
    resolve_freeze(model, s["freeze"]["groups"])


# ----------------------------------------------------------------------------- building blocks

def resolve_freeze(model: nn.Module, groups) -> list[str]:
    """Parameter names selected by group names (models.parameter_groups) or raw name prefixes."""
    from . import models

    named = [n for n, _ in model.named_parameters()]
    try:
        table = dict(models.parameter_groups(model))
    except Exception:
        table = {}
    selected: list[str] = []
    for g in groups:
        prefixes = table.get(g)
        if prefixes is None:
            prefixes = [g]
        hits = [n for n in named if any(n == p or n.startswith(p.rstrip(".") + ".") or (p.endswith(".") and n.startswith(p))
                                         for p in prefixes)]
        if not hits:
            raise ConfigError(f"freeze.groups: {g!r} is neither a parameter group of this model "
                              f"({', '.join(sorted(table)) or 'none'}) nor a prefix of any parameter name")
        selected += [n for n in hits if n not in selected]
    return selected


def build_optimizer(model: nn.Module, opt: Mapping) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if opt["name"] == "sgd":
        return torch.optim.SGD(params, lr=float(opt["lr"]), momentum=float(opt.get("momentum", 0.0)),
                               weight_decay=float(opt.get("weight_decay", 0.0)),
                               nesterov=bool(opt.get("nesterov", False)), dampening=float(opt.get("dampening", 0.0)))
    if opt["name"] == "adam":
        return torch.optim.Adam(params, lr=float(opt["lr"]), betas=tuple(float(b) for b in opt.get("betas", (0.9, 0.999))),
                                eps=float(opt.get("eps", 1e-8)), weight_decay=float(opt.get("weight_decay", 0.0)),
                                amsgrad=bool(opt.get("amsgrad", False)))
    raise ConfigError(f"optimizer.name: unknown optimizer {opt['name']!r}; choose sgd or adam")


def _up(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) to float32 for the loss; float32/64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al.: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    Batch means; computed in float32 (also under autocast). ``teacher_logits=None``
    gives plain cross-entropy.
    """
    s = _up(student_logits)
    ce = F.cross_entropy(s, targets)
    if teacher_logits is None:
        return ce
    t = float(temperature)
    log_ps = F.log_softmax(s / t, dim=1)
    log_pt = F.log_softmax(_up(teacher_logits).to(s.dtype) / t, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    return float(alpha) * t * t * kl + (1.0 - float(alpha)) * ce


def accumulate_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch_size: int | None, *,
                         loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                         teacher: nn.Module | None = None, autocast=None,
                         forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of one (possibly accumulated) batch; returns (sum of per-sample loss, #correct) as tensors.

    ``micro_batch_size`` < len(x): the batch is split into equal micro-batches and
    each micro-batch loss is divided by their number, so the gradient equals the
    full batch's mean-loss gradient (without batch norm).
    """
    import contextlib

    forward = model if forward is None else forward
    loss_fn = loss_fn or (lambda s, t, yy: F.cross_entropy(_up(s), yy))
    n = x.shape[0]
    mb = n if not micro_batch_size or micro_batch_size >= n else int(micro_batch_size)
    n_micro = math.ceil(n / mb)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for xm, ym in zip(x.split(mb), y.split(mb)):
        with (autocast() if autocast else contextlib.nullcontext()):
            logits = forward(xm)
            t_logits = None
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(xm)
            loss = loss_fn(logits, t_logits, ym)
        (loss / n_micro).backward() if n_micro > 1 else loss.backward()
        with torch.no_grad():
            loss_sum += loss.detach().double() * xm.shape[0]
            correct += (logits.detach().argmax(1) == ym).sum()
    return loss_sum, correct


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, autocast=None, forward=None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over an (unaugmented) loader, in eval mode."""
    import contextlib

    forward = model if forward is None else forward
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    n = 0
    with torch.inference_mode():
        for x, y in loader.batches(0):
            with (autocast() if autocast else contextlib.nullcontext()):
                logits = forward(x)
            logits = _up(logits)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
    model.train(was_training)
    n = max(n, 1)
    return float(loss_sum) / n, float(correct) / n


class _CompiledOrEager:
    """``torch.compile(model)``, falling back to the eager model if compiling fails on first use."""

    def __init__(self, model: nn.Module, say: Callable[[str], Any]) -> None:
        self.model, self.say, self.ok = model, say, None
        try:
            self.fn = torch.compile(model)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self.ok = False
        self.say(f"compile: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                 "running eagerly")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.ok is False:
            return self.model(x)
        if self.ok:
            return self.fn(x)
        try:
            out = self.fn(x)
        except Exception as exc:  # no C++ toolchain, unsupported op, ...
            self._fail(exc)
            return self.model(x)
        self.ok = True
        return out


def spec_hash(spec: Mapping) -> str:
    """Hash of everything that determines the trained weights (not device/threads/progress knobs)."""
    ignore = {"device", "threads", "resume_every", "eval_batch_size", "compile", "name"}
    s = {k: v for k, v in spec.items() if k not in ignore}
    return hashlib.sha256(json.dumps(s, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": _py_state_to_list(random.getstate())}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _py_state_to_list(state) -> list:
    version, internal, gauss = state
    return [int(version), [int(v) for v in internal], gauss]


def _set_rng_state(st: Mapping) -> None:
    torch.set_rng_state(st["torch"])
    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % (2 ** 32))
    except ImportError:
        pass


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    return str(x)


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in METRICS_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def load_teacher(path: str | os.PathLike, device: torch.device, data_info: Mapping) -> nn.Module | None:
    """Teacher from a checkpoint (meta['model'] spec), eval mode, no grad; None if it diverged."""
    from . import models

    ck = load_checkpoint(path)
    meta = ck.get("meta", {})
    if ck.get("model") is None:
        return None
    if "model" not in meta:
        raise CheckpointError(f"{path}: teacher checkpoint has no meta['model'] spec to rebuild the network")
    dinfo = meta.get("data") or data_info
    teacher = models.build_model(meta["model"], dinfo.get("in_channels", data_info["in_channels"]),
                                 dinfo.get("num_classes", data_info["num_classes"]),
                                 dinfo.get("image_size", data_info["image_size"]))
    try:
        teacher.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: teacher weights do not fit its model spec {meta['model']}: {exc}") from exc
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


# ----------------------------------------------------------------------------- the engine

def _status_complete(out: Path, h: str) -> dict | None:
    st_path, final = out / "status.json", out / "final.pt"
    if not (st_path.exists() and final.exists()):
        return None
    try:
        st = json.loads(st_path.read_text())
    except (OSError, ValueError):
        return None
    if st.get("complete") and st.get("spec_hash") == h and st.get("status") in ("ok", "diverged"):
        return st
    return None


def train_run(spec: Mapping, out_dir: str | os.PathLike, *, progress: Callable[[str], Any] | None = print) -> dict:
    """Train one run into ``out_dir`` (resuming from ``out_dir/resume.pt`` when present).

    Returns ``{"status": "ok"|"diverged", "epoch", "iteration", "train_loss", "train_acc",
    "test_loss", "test_acc", "wall_s", "images_per_s", ...}``.
    """
    from . import data, models

    say = progress or (lambda _m: None)
    s = validate_run_spec(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h = spec_hash(s)
    done = _status_complete(out, h)
    if done is not None:
        say(f"{out}: already complete ({done['status']}); nothing to do")
        return dict(done.get("final", {}), status=done["status"])

    devices.set_threads(s["threads"])
    device = devices.resolve_device(s["device"])
    precision = devices.resolve_precision(s["precision"], device)
    amp = (lambda: devices.autocast(device, precision)) if precision != "fp32" else None

    # data
    tr_x, tr_y, te_x, te_y, info = data.load_subsets(s["data"])
    train_loader = data.DeviceLoader(tr_x, tr_y, s["batch_size"], mean=info["mean"], std=info["std"],
                                     augment=s["augment"], shuffle=True, seed=s["seed"], device=device,
                                     drop_last=True, channels_last=s["channels_last"])
    test_loader = data.DeviceLoader(te_x, te_y, s["eval_batch_size"], mean=info["mean"], std=info["std"],
                                    augment=False, shuffle=False, seed=0, device=device, drop_last=False,
                                    channels_last=s["channels_last"])
    ipe = len(train_loader)
    if ipe < 1:
        raise ConfigError(f"batch_size: {s['batch_size']} is larger than the training set ({len(tr_y)} images)")
    epochs = s["epochs"]
    total = ipe * epochs
    _check_iterations(s["checkpoints"]["iterations"], total)
    data_meta = {k: info[k] for k in ("name", "in_channels", "num_classes", "image_size")}

    # model (initialisation depends on the seed only)
    _seed_everything(s["seed"])
    model = models.build_model(s["model"], info["in_channels"], info["num_classes"], info["image_size"]).to(device)
    if s["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    forward = _CompiledOrEager(model, say) if s["compile"] else model
    frozen_names = resolve_freeze(model, s["freeze"]["groups"]) if s["freeze"] else []
    freeze_until = s["freeze"]["iterations"] if s["freeze"] else 0
    pmap = dict(model.named_parameters())
    frozen = [pmap[n] for n in frozen_names]
    optimizer = build_optimizer(model, s["optimizer"])
    scheduler = schedules.make_scheduler(optimizer, s, ipe, total)

    teacher = None
    teacher_diverged = False
    if s["distill"]:
        teacher = load_teacher(s["distill"]["teacher"], device, info)
        teacher_diverged = teacher is None
        if teacher is not None and s["channels_last"]:
            teacher = teacher.to(memory_format=torch.channels_last)
    dist = s["distill"]
    loss_fn = ((lambda st, tt, yy: distillation_loss(st, tt, yy, dist["temperature"], dist["alpha"]))
               if dist else None)

    ck_epochs = set(s["checkpoints"]["epochs"])
    ck_iters = set(s["checkpoints"]["iterations"])
    base_meta = {"run": s["name"], "seed": s["seed"], "model": s["model"], "data": data_meta,
                 "spec_hash": h, "optimizer": s["optimizer"], "schedule": s["schedule"],
                 "warmup": s["warmup"], "batch_size": s["batch_size"], "iters_per_epoch": ipe,
                 "total_iterations": total}

    def ckpt(path: Path, iteration: int, status: str = "ok", with_model: bool = True) -> None:
        if path.exists():  # never rewritten (a resumed run would write the same bytes anyway)
            return
        meta = dict(base_meta, epoch=iteration / ipe, iteration=iteration, status=status,
                    lr=schedules.lr_at(s, iteration, ipe, total) if iteration < total else None)
        save_checkpoint(path, model.state_dict() if with_model and status == "ok" else None, meta)

    def weights_finite() -> bool:
        return all(bool(torch.isfinite(p).all()) for p in model.parameters())

    # state
    st = {"iteration": 0, "epoch": 0, "pos": 0, "rows": [], "wall_s": 0.0, "loss_sum": 0.0, "correct": 0,
          "count": 0, "epoch_train_s": 0.0}
    resume_path = out / "resume.pt"
    resumed = False
    if resume_path.exists():
        try:
            r = safe_torch_load(resume_path, map_location="cpu")
            ok = isinstance(r, dict) and r.get("format") == RESUME_FORMAT and r.get("spec_hash") == h
        except CheckpointError as exc:
            say(f"resume: ignoring unreadable {resume_path} ({exc})")
            ok = False
        if ok:
            model.load_state_dict(r["model"])
            optimizer.load_state_dict(r["optimizer"])
            scheduler.load_state_dict(r["scheduler"])
            _set_rng_state(r["rng"])
            st.update(r["state"])
            resumed = True
            say(f"resume: continuing {s['name']} from iteration {st['iteration']} (epoch {st['epoch']}, batch {st['pos']})")
        elif resume_path.exists():
            say(f"resume: {resume_path} belongs to another spec; starting afresh")

    def save_resume() -> None:
        atomic_torch_save({"format": RESUME_FORMAT, "spec_hash": h, "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "rng": _rng_state(), "state": dict(st)}, resume_path)

    t_start = time.perf_counter()
    wall0 = st["wall_s"]

    def wall() -> float:
        return wall0 + time.perf_counter() - t_start

    if not resumed:
        # A fresh start: anything under our output names is stale (another spec, or a run killed
        # before its first resume save, which would write the same bytes again). Remove it so that
        # the "never rewrite an existing checkpoint" rule below cannot keep a stale file.
        stale = [out / f"epoch{e}.pt" for e in ck_epochs] + [out / f"iter{i}.pt" for i in ck_iters]
        stale += [out / "final.pt", out / "metrics.csv", out / "status.json"]
        removed = [p.name for p in stale if p.exists()]
        for p in stale:
            p.unlink(missing_ok=True)
        if removed:
            say(f"fresh start: removed stale outputs {', '.join(removed)}")
        if 0 in ck_iters:
            ckpt(out / "iter0.pt", 0)
        if 0 in ck_epochs:
            ckpt(out / "epoch0.pt", 0)

    def set_frozen(flag: bool) -> None:
        for p in frozen:
            p.requires_grad_(not flag)

    sleep = float(os.environ.get("CLOSERLOOK_TEST_ITER_SLEEP", "0") or 0)  # test hook: slow runs down
    check_every = 1 if device.type == "cpu" else 8
    diverged_at: int | None = None
    diverge_reason = ""
    if teacher_diverged:
        diverged_at, diverge_reason = 0, "teacher checkpoint is marked diverged"
    model.train()
    mb = s["micro_batch_size"]
    loss_acc = torch.tensor(st["loss_sum"], dtype=torch.float64, device=device)
    correct_acc = torch.tensor(st["correct"], dtype=torch.int64, device=device)
    t_train = 0.0

    while diverged_at is None and st["epoch"] < epochs:
        e = st["epoch"]
        t0 = time.perf_counter()
        for x, y in train_loader.batches(e, st["pos"]):
            it = st["iteration"]
            set_frozen(it < freeze_until)
            optimizer.zero_grad(set_to_none=True)
            ls, cor = accumulate_gradients(model, x, y, mb, loss_fn=loss_fn, teacher=teacher, autocast=amp,
                                           forward=forward)
            if (it + 1) % check_every == 0 or (it + 1) in ck_iters or (it + 1) % s["resume_every"] == 0:
                if not math.isfinite(float(ls)):
                    diverged_at, diverge_reason = it, f"non-finite training loss at iteration {it}"
                    loss_acc += ls
                    st["count"] += y.shape[0]
                    break
            optimizer.step()
            scheduler.step()
            loss_acc += ls
            correct_acc += cor
            st["count"] += y.shape[0]
            st["iteration"] = it + 1
            st["pos"] += 1
            if sleep:
                time.sleep(sleep)
            if st["iteration"] in ck_iters:
                if not weights_finite():
                    diverged_at, diverge_reason = it, f"non-finite weights after iteration {it}"
                    break
                ckpt(out / f"iter{st['iteration']}.pt", st["iteration"])
            if st["iteration"] % s["resume_every"] == 0 and st["pos"] < ipe:
                st["loss_sum"], st["correct"] = float(loss_acc), int(correct_acc)
                st["epoch_train_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                st["wall_s"] = wall()
                save_resume()
        if diverged_at is None and not math.isfinite(float(loss_acc)):
            diverged_at, diverge_reason = st["iteration"] - 1, "non-finite training loss"
        t_train = st["epoch_train_s"] + time.perf_counter() - t0
        if diverged_at is not None:
            break
        # epoch end
        e1 = e + 1
        n = max(st["count"], 1)
        train_loss, train_acc = float(loss_acc) / n, int(correct_acc) / n
        if e1 % s["eval_every"] == 0 or e1 == epochs:
            test_loss, test_acc = evaluate(model, test_loader, autocast=amp, forward=forward)
        else:
            test_loss, test_acc = float("nan"), float("nan")
        lr_now = schedules.lr_at(s, st["iteration"] - 1, ipe, total)
        row = {"epoch": e1, "iteration": st["iteration"], "lr": lr_now, "train_loss": train_loss,
               "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc, "wall_s": round(wall(), 3),
               "images_per_s": round(st["count"] / max(t_train, 1e-9), 1), "status": "ok"}
        if e1 in ck_epochs or e1 == epochs:
            if not weights_finite():
                diverged_at, diverge_reason = st["iteration"] - 1, f"non-finite weights at the end of epoch {e1}"
                break
        st["rows"].append(row)
        write_metrics(out / "metrics.csv", st["rows"])
        if e1 in ck_epochs:
            ckpt(out / f"epoch{e1}.pt", st["iteration"])
        say(f"epoch {e1}/{epochs} it {st['iteration']} lr {lr_now:.4g} train_loss {train_loss:.4f} "
            f"train_acc {train_acc:.4f} test_loss {test_loss:.4f} test_acc {test_acc:.4f} "
            f"img/s {row['images_per_s']:.0f}")
        st.update(epoch=e1, pos=0, loss_sum=0.0, correct=0, count=0, epoch_train_s=0.0, wall_s=wall())
        loss_acc.zero_()
        correct_acc.zero_()
        if e1 < epochs:
            save_resume()

    if diverged_at is not None:
        status = "diverged"
        e1 = st["epoch"] + 1
        n = max(st["count"], 1)
        row = {"epoch": e1, "iteration": st["iteration"], "lr": schedules.lr_at(s, max(st["iteration"] - 1, 0), ipe, total),
               "train_loss": float("nan"), "train_acc": int(correct_acc) / n, "test_loss": float("nan"),
               "test_acc": float("nan"), "wall_s": round(wall(), 3),
               "images_per_s": round(st["count"] / max(t_train, 1e-9), 1), "status": "diverged"}
        st["rows"].append(row)
        say(f"diverged: {diverge_reason}; writing the remaining checkpoints as diverged")
        for e in sorted(ck_epochs):
            ckpt(out / f"epoch{e}.pt", e * ipe, status="diverged")
        for i in sorted(ck_iters):
            ckpt(out / f"iter{i}.pt", i, status="diverged")
        ckpt(out / "final.pt", total, status="diverged")
        final = {"epoch": st["epoch"], "iteration": st["iteration"], "train_loss": float("nan"),
                 "train_acc": float("nan"), "test_loss": float("nan"), "test_acc": float("nan")}
    else:
        status = "ok"
        ckpt(out / "final.pt", total)
        last = st["rows"][-1]
        final = {k: last[k] for k in ("epoch", "iteration", "train_loss", "train_acc", "test_loss", "test_acc")}
    final.update(wall_s=round(wall(), 3), images_per_s=st["rows"][-1]["images_per_s"] if st["rows"] else float("nan"))
    write_metrics(out / "metrics.csv", st["rows"])
    status_obj = {"status": status, "complete": True, "run": s["name"], "seed": s["seed"], "spec_hash": h,
                  "final": _jsonable(final), "device": str(device), "precision": precision,
                  "iters_per_epoch": ipe, "total_iterations": total}
    if diverged_at is not None:
        status_obj.update(diverged_at_iteration=diverged_at, reason=diverge_reason)
    atomic_write_json(out / "status.json", status_obj)
    if resume_path.exists():
        resume_path.unlink()
    return dict(final, status=status)


def _jsonable(d: Mapping) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------- CLI

def _set_key(spec: dict, dotted: str, value: str) -> None:
    import yaml

    keys = dotted.split(".")
    cur = spec
    for k in keys[:-1]:
        if cur.get(k) is None:
            cur[k] = {}
        cur = cur[k]
    cur[keys[-1]] = yaml.safe_load(value)


def load_spec(path: str | os.PathLike) -> dict:
    import yaml

    text = Path(path).read_text()
    try:
        spec = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse run spec: {exc}") from exc
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a run spec must be a mapping")
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m closerlook.train", description="Train one run spec into a run directory.")
    ap.add_argument("--spec", required=True, help="run spec (YAML or JSON)")
    ap.add_argument("--out", required=True, help="run directory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec key (dotted, value parsed as YAML), e.g. --set optimizer.lr=0.1")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        for kv in args.set:
            if "=" not in kv:
                raise ConfigError(f"--set {kv!r}: expected KEY=VALUE")
            k, v = kv.split("=", 1)
            _set_key(spec, k.strip(), v)
        res = train_run(spec, args.out, progress=None if args.quiet else (lambda m: print(m, flush=True)))
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(_jsonable(res), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
