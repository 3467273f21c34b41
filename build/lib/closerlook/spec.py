"""The run spec: what one training run is (docs/DESIGN.md), its defaults, its checks, its hash.

:func:`validate_run_spec` completes a spec with :data:`DEFAULTS` and checks it
block by block (data, model, optimizer, batch, schedule, runtime knobs,
checkpoints, freezing, distillation); a problem raises
:class:`~closerlook.io.ConfigError` naming the key. :func:`spec_hash` is the
fingerprint of everything that determines the trained weights. :func:`load_spec`
reads a spec file (YAML through ``yaml.safe_load``, or JSON).
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from . import catalog, schedules
from .io import ConfigError, check_keys, fingerprint
from .defaults import DEFAULTS, DISTILL_DEFAULTS, OPTIMIZER_DEFAULTS  # noqa: F401 (torch-free: planning imports no torch)

DATA_KEYS = {"name", "root", "cache_dir", "train_per_class", "test_per_class", "subset_seed", "probe_size"}
OPTIMIZER_KEYS = {"sgd": {"name", "lr", "momentum", "weight_decay", "nesterov", "dampening"},
                  "adam": {"name", "lr", "betas", "eps", "weight_decay", "amsgrad"}}
FREEZE_KEYS = {"groups", "iterations"}
DISTILL_KEYS = {"teacher", "temperature", "alpha"}
CHECKPOINT_KEYS = {"epochs", "iterations"}
# knobs that change how a run is computed but not its weights: outside the hash
HASH_IGNORES = {"device", "threads", "resume_every", "eval_batch_size", "compile", "name"}
# training-set sizes (images per class, classes) of the built-in sets, for checking checkpoint
# iterations before any data is loaded; other sets are checked when the run starts
_KNOWN_TRAIN = {"fashion_mnist": (6000, 10), "cifar10": (5000, 10), "cifar10_jpeg": (5000, 10)}
_FLOAT_KEYS = {"optimizer": ("lr", "momentum", "weight_decay", "eps", "dampening"),
               "schedule": ("lr_min", "gamma", "final_factor", "T0", "Tmult"),
               "warmup": ("start_factor",), "distill": ("temperature", "alpha")}
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _merge(base: Mapping, over: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = copy.deepcopy(v)
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def iters_per_epoch_for(spec: Mapping, n_train: int) -> int:
    """Optimizer steps per epoch (partial last batches are dropped)."""
    return int(n_train) // int(spec["batch_size"])


def spec_hash(spec: Mapping) -> str:
    """Fingerprint of everything that determines the trained weights (not device/threads/progress knobs).

    That includes the stored order of a re-ordered data set (:func:`closerlook.data.stored_order`:
    the folder sets), so a finished run or resume state from the class-sorted folder caches of
    before is not reused; for every other set the hash is what it was without it."""
    key = {k: v for k, v in spec.items() if k not in HASH_IGNORES}
    if key.get("sharpness_trace") is None:
        # absent like before the key existed: runs without a trace keep their hashes (and finished runs);
        # a trace is hashed: a run finished without it must be redone to write its trajectory
        key.pop("sharpness_trace", None)
    order = catalog.stored_order((spec.get("data") or {}).get("name"))
    if order != catalog.SOURCE_ORDER:
        key["data_order"] = order
    return fingerprint(key)


def validate_run_spec(spec: Mapping, build: bool = True) -> dict:
    """Check a run spec; return it completed with defaults. Raises ConfigError naming the key.

    ``build=False`` checks everything that needs no torch (planning: :func:`closerlook.config.validate_config`
    with ``models=False``); ``build=True`` also imports an external factory, builds the model on the meta
    device and resolves freeze groups on it (the ``check_models`` job, and every training run)."""
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
    _check_data(s["data"], build)
    model = _check_model(s) if build else _check_model_spec(s)
    s["optimizer"] = _check_optimizer(s["optimizer"])
    _check_batch(s)
    _check_schedule(s)
    _check_runtime(s)
    s["checkpoints"] = _check_checkpoints(s)
    if s["freeze"] is not None:
        s["freeze"] = _check_freeze(s, model)
    if s["distill"] is not None:
        s["distill"] = _check_distill(s["distill"])
    from .stability import check_trace

    s["sharpness_trace"] = check_trace(s["sharpness_trace"], s)
    return s


def _check_data(d: dict, build: bool = True) -> None:
    check_keys(d, DATA_KEYS, "data")
    if build:
        from .data import check_name  # torch: only where the model is built (planning imports no torch)

        check_name(d["name"])
    else:
        catalog.check_data_name(d["name"])
    for k in ("train_per_class", "test_per_class"):
        if d[k] is not None and (not _is_int(d[k]) or d[k] < 1):
            raise ConfigError(f"data.{k}: {d[k]!r} must be a positive integer or null")
    if not _is_int(d["subset_seed"]):
        raise ConfigError(f"data.subset_seed: {d['subset_seed']!r} must be an integer")


def _check_optimizer(o: Mapping) -> dict:
    oname = o.get("name")
    if oname not in OPTIMIZER_KEYS:
        raise ConfigError(f"optimizer.name: unknown optimizer {oname!r}; choose sgd or adam")
    check_keys(o, OPTIMIZER_KEYS[oname], "optimizer", f" for {oname}")
    o = _merge(OPTIMIZER_DEFAULTS[oname], o)
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
        return o
    b = o["betas"]
    if not isinstance(b, (list, tuple)) or len(b) != 2 or not all(_is_num(x) and 0 <= x < 1 for x in b):
        raise ConfigError(f"optimizer.betas: {b!r} must be two numbers in [0, 1)")
    if not _is_num(o["eps"]) or o["eps"] <= 0:
        raise ConfigError(f"optimizer.eps: {o['eps']!r} must be > 0")
    return o


def _check_batch(s: dict) -> None:
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


def _check_schedule(s: dict) -> None:
    if s["warmup"] is None:
        s["warmup"] = dict(DEFAULTS["warmup"])
    if s["schedule"] is None:
        s["schedule"] = {"name": "constant"}
    schedules.validate_schedule(s["schedule"], s["warmup"], epochs=s["epochs"], base_lr=float(s["optimizer"]["lr"]))
    s["warmup"] = _merge(DEFAULTS["warmup"], s["warmup"])


def _check_runtime(s: dict) -> None:
    for k in ("augment", "channels_last", "compile"):
        if not isinstance(s[k], bool):
            raise ConfigError(f"{k}: {s[k]!r} must be true or false")
    for k in ("eval_every", "eval_batch_size", "resume_every"):
        if not _is_int(s[k]) or s[k] <= 0:
            raise ConfigError(f"{k}: {s[k]!r} must be a positive integer")
    catalog.check_device_name(s["device"])
    if s["precision"] not in catalog.PRECISIONS:
        raise ConfigError(f"precision: {s['precision']!r} is not one of {', '.join(catalog.PRECISIONS)}")
    if s["threads"] is not None and (not _is_int(s["threads"]) or s["threads"] < 1):
        raise ConfigError(f"threads: {s['threads']!r} must be a positive integer or null")


def _check_checkpoints(s: dict) -> dict:
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
    c = {"epochs": sorted(set(c["epochs"])), "iterations": sorted(set(c["iterations"]))}
    d = s["data"]
    known = _KNOWN_TRAIN.get(d["name"])
    if known is not None:
        per, ncls = known
        n = ncls * (min(d["train_per_class"], per) if d["train_per_class"] else per)
        ipe = iters_per_epoch_for(s, n)
        if ipe < 1:
            raise ConfigError(f"batch_size: {s['batch_size']} is larger than the training set ({n} images)")
        check_iterations(c["iterations"], ipe * s["epochs"])
    return c


def check_iterations(iterations, total: int) -> None:
    for i in iterations:
        if i > total:
            raise ConfigError(f"checkpoints.iterations: iteration {i} is beyond the run's {total} iterations")


def _check_model(s: dict):
    """The model spec checked; when the data's shape is known without reading it, the network is built
    once on the meta device (no memory, no init cost) so that an unimportable factory, a non-Module, a
    wrong output shape or a layer / group pattern matching nothing is an error now. Returns that model
    (None when not built)."""
    import torch  # torch and the model code: only where the model is built (planning imports no torch)

    from . import factories, models

    spec = models.normalise_spec(s["model"])
    dims = catalog.known_dims(s["data"]["name"])
    if dims is None and factories.is_external(spec["name"]):
        factories.import_factory(spec["name"])  # importable now; called when the data's shape is known
    if dims is None or not (factories.is_external(spec["name"]) or s["freeze"] is not None
                            or {"analysis_layers", "groups"} & set(spec)):
        return None
    with torch.device("meta"):
        return models.build_model(s["model"], *dims)


def _check_model_spec(s: dict) -> None:
    """The model spec's keys and values, without torch (no factory imported, nothing built)."""
    catalog.normalise_spec(s["model"])


def _check_freeze(s: dict, model) -> dict:
    fr = s["freeze"]
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
    if model is not None:  # group names resolved on a parameter-free (meta) model
        from .models import resolve_freeze

        resolve_freeze(model, list(g))
    return {"groups": list(g), "iterations": it}


def _check_distill(di: Any) -> dict:
    if not isinstance(di, Mapping):
        raise ConfigError(f"distill: must be a mapping {{teacher, temperature, alpha}} or null, got {di!r}")
    check_keys(di, DISTILL_KEYS, "distill")
    if not isinstance(di.get("teacher"), (str, os.PathLike)) or not str(di.get("teacher")):
        raise ConfigError(f"distill.teacher: {di.get('teacher')!r} must be a checkpoint path")
    t = di.get("temperature", DISTILL_DEFAULTS["temperature"])
    if not _is_num(t) or t <= 0:
        raise ConfigError(f"distill.temperature: {t!r} must be a number > 0")
    a = di.get("alpha", DISTILL_DEFAULTS["alpha"])
    if not _is_num(a) or not 0 <= a <= 1:
        raise ConfigError(f"distill.alpha: {a!r} must be in [0, 1]")
    return {"teacher": str(di["teacher"]), "temperature": float(t), "alpha": float(a)}


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


# ----------------------------------------------------------------------------- spec files

def load_spec(path: str | os.PathLike) -> dict:
    """A run spec from a YAML (``yaml.safe_load``) or JSON file; ConfigError naming the file."""
    import yaml

    text = Path(path).read_text()
    try:
        spec = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse run spec: {exc}") from exc
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a run spec must be a mapping")
    return spec


def set_key(spec: dict, dotted: str, value: str) -> None:
    """``--set optimizer.lr=0.1``: the value parsed as YAML, intermediate blocks created."""
    import yaml

    keys = dotted.split(".")
    cur = spec
    for k in keys[:-1]:
        if cur.get(k) is None:
            cur[k] = {}
        cur = cur[k]
    cur[keys[-1]] = yaml.safe_load(value)
