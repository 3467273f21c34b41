"""What a config may name, checked without torch: data sets, devices, model factories, model specs.

The names and spec checks that planning (``snakemake -n``, :func:`closerlook.config.validate_config`)
needs, apart from the torch code that builds what they name, so that planning imports no torch.
Each is re-exported under its old name by the module that uses it (``data.stored_order``,
``devices.check_device_name``, ``factories.is_external``, ``models.normalise_spec``, ...).
What needs the real thing (importing a factory, building a model on the meta device, looking up
a torchvision data set class) stays in those modules; the workflow runs it in the ``check_models``
job (:func:`closerlook.config.check_models`). Imports: the standard library and :mod:`closerlook.io`.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

from .io import ConfigError


# --------------------------------------------------------------------------- data sets (closerlook.data)

# the stored order of folder data sets (module docstring, "Stored order"); any fixed seed would do.
# Changing either value changes every folder set's order: old caches are then re-decoded.
FOLDER_ORDER_SEED = 20190506
FOLDER_ORDER = f"class-mixed/randperm-seed{FOLDER_ORDER_SEED}"
SOURCE_ORDER = "source"  # sets stored in the order of their files (what caches without an "order" hold)
FOLDER_SETS = ("imagefolder", "cifar10_jpeg")

DATASET_NAMES = ("cifar10", "fashion_mnist", "imagefolder", "cifar10_jpeg")
TORCHVISION_PREFIX = "torchvision:"

# (in_channels, num_classes, image_size) known before any data is read, for checking a model
# against the data at config time; other sets are checked when their first job builds the model
KNOWN_DIMS = {"cifar10": (3, 10, 32), "cifar10_jpeg": (3, 10, 32), "fashion_mnist": (1, 10, 28),
              "torchvision:MNIST": (1, 10, 28), "torchvision:FashionMNIST": (1, 10, 28),
              "torchvision:KMNIST": (1, 10, 28), "torchvision:QMNIST": (1, 10, 28),
              "torchvision:CIFAR10": (3, 10, 32), "torchvision:CIFAR100": (3, 100, 32),
              "torchvision:SVHN": (3, 10, 32), "torchvision:STL10": (3, 10, 96)}

PROBE_SIZE = 1000  # images in the similarity probe set when a config does not say (data.probe_size)

def stored_order(name: str) -> str:
    """How a data set's images are ordered in its cache: ``FOLDER_ORDER`` for the folder sets
    (class-mixed permutation), ``SOURCE_ORDER`` (the files' own order) for the others."""
    return FOLDER_ORDER if name in FOLDER_SETS else SOURCE_ORDER

def known_dims(name: str) -> tuple[int, int, int] | None:
    """(in_channels, num_classes, image_size) of a data set when known without reading it, else None."""
    return KNOWN_DIMS.get(name)


# --------------------------------------------------------------------------- devices (closerlook.devices)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("auto", "fp32", "bf16")

def _device_value(spec: Any) -> str:
    if isinstance(spec, Mapping):
        spec = spec.get("device", "auto")
    if spec is None:
        return "auto"
    return str(spec).strip().lower()

def check_device_name(value: Any, key: str = "device") -> str:
    """Validate the *form* of a device value (without requiring the hardware)."""
    v = _device_value(value)
    if v in ("auto", "cpu", "cuda"):
        return v
    if v.startswith("cuda:") and v[5:].isdigit():
        return v
    raise ConfigError(f"{key}: {value!r} is not a device; use one of auto, cpu, cuda, cuda:N")


# --------------------------------------------------------------------------- model factories (closerlook.factories)

ADAPTERS = ("none", "io", "small_input")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

def is_external(name: Any) -> bool:
    return isinstance(name, str) and ":" in name

def split_name(name: str, key: str = "model.name", default_module: str = "torchvision.models") -> tuple[str, str]:
    """``"pkg.mod:attr.sub"`` -> ``("pkg.mod", "attr.sub")``; ``torchvision:x`` -> ``(default_module, "x")``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{key}: {name!r} is not a factory name of the form 'package.module:callable' "
                          "(or 'torchvision:<name>')")
    mod, attr = name.split(":", 1)
    return (default_module if mod == "torchvision" else mod), attr

def normalise_adapt(value: Any) -> str:
    if value is True:
        return "io"
    if value is False or value is None:
        return "none"
    if value not in ADAPTERS:
        raise ConfigError(f"model.adapt: {value!r} is not one of {', '.join(ADAPTERS)} (or true = io)")
    return value


# --------------------------------------------------------------------------- model specs (closerlook.models)

MODEL_NAMES = ("vgg11", "vgg16", "resnet18", "small_cnn")
INITS = ("default", "paper", "scaled", "kaiming")
BUILTIN_ONLY = ("batch_norm", "init_scale", "width", "dropout", "skip")
SPEC_KEYS = ("name", *BUILTIN_ONLY, "init", "kwargs", "adapt", "analysis_layers", "groups")
EXTERNAL_KEYS = ("name", "kwargs", "adapt", "init", "analysis_layers", "groups")

def normalise_spec(spec: dict) -> dict:
    """The model spec completed with its defaults; ConfigError naming a bad key."""
    if not isinstance(spec, dict):
        raise ConfigError(f"model: must be a mapping with at least 'name', got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: unknown model key; known keys: {', '.join(SPEC_KEYS)}")
    name = spec.get("name")
    if is_external(name):
        return _normalise_external(spec)
    if name not in MODEL_NAMES:
        raise ConfigError(f"model.name: unknown model {name!r}; known: {', '.join(MODEL_NAMES)}, "
                          "or 'torchvision:<name>' / 'package.module:factory'")
    for k in ("kwargs", "adapt"):
        if k in spec:
            raise ConfigError(f"model.{k}: only for external factories ('torchvision:...', 'module:factory'), "
                              f"not the built-in {name}")
    bn = spec.get("batch_norm", None)
    if bn is None:
        bn = name == "resnet18"
    if not isinstance(bn, bool):
        raise ConfigError(f"model.batch_norm: must be true or false, got {bn!r}")
    init = spec.get("init", "default")
    if init not in INITS:
        raise ConfigError(f"model.init: unknown init {init!r}; known: {', '.join(INITS)}")
    scale = spec.get("init_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"model.init_scale: must be a number > 0, got {scale!r}")
    width = spec.get("width", 1)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ConfigError(f"model.width: must be a number > 0, got {width!r}")
    dropout = spec.get("dropout", 0.5 if name.startswith("vgg") else 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout: must be a number in [0, 1), got {dropout!r}")
    if name == "resnet18" and "dropout" in spec:
        raise ConfigError("model.dropout: not supported by resnet18")
    skip = spec.get("skip", True)
    if not isinstance(skip, bool):
        raise ConfigError(f"model.skip: must be true or false, got {skip!r}")
    if name != "resnet18" and "skip" in spec:
        raise ConfigError(f"model.skip: only resnet18 has skip connections, not {name}")
    out = {"name": name, "batch_norm": bn, "init": init, "init_scale": float(scale),
           "width": width, "dropout": float(dropout)}
    if name == "resnet18":
        out["skip"] = skip
    return _with_layers(out, spec)


def _normalise_external(spec: dict) -> dict:
    name = spec["name"]
    split_name(name)
    builtin = [k for k in BUILTIN_ONLY if k in spec]
    if builtin:
        raise ConfigError(f"model.{builtin[0]}: a built-in-only key ({', '.join(BUILTIN_ONLY)}); the external "
                          f"factory {name!r} takes its settings in model.kwargs")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"model.kwargs: must be a mapping of keyword arguments, got {kwargs!r}")
    init = spec.get("init", "default")
    if init not in INITS or init == "scaled":
        raise ConfigError(f"model.init: {init!r} is not one of default, paper, kaiming for an external factory "
                          "(scaled needs init_scale, a built-in-only key)")
    out = {"name": name, "kwargs": dict(kwargs), "adapt": normalise_adapt(spec.get("adapt")), "init": init}
    return _with_layers(out, spec)


def _with_layers(out: dict, spec: dict) -> dict:
    layers = spec.get("analysis_layers")
    if layers is not None:
        if isinstance(layers, str):
            layers = [layers]
        if not isinstance(layers, list) or not layers or not all(isinstance(x, str) and x for x in layers):
            raise ConfigError(f"model.analysis_layers: must be a non-empty list of module names or glob patterns, "
                              f"got {spec.get('analysis_layers')!r}")
        out["analysis_layers"] = list(layers)
    if spec.get("groups") is not None:
        g = spec["groups"]
        if not isinstance(g, dict) or not g:
            raise ConfigError(f"model.groups: must be a mapping {{group: [module patterns]}}, got {g!r}")
        out["groups"] = {str(k): [v] if isinstance(v, str) else list(v or []) for k, v in g.items()}
    return out


def arch_key(spec: dict) -> tuple:
    """What makes two model specs the same layers (for per-layer comparisons and curves): name, width,
    skip, factory kwargs and adapter, analysis layers."""
    s = normalise_spec(spec)
    return (s["name"], float(s.get("width", 1.0)), s.get("skip", True), repr(sorted(s.get("kwargs", {}).items())),
            s.get("adapt", "none"), tuple(s.get("analysis_layers") or ()))


def check_data_name(name: Any) -> None:
    """:func:`closerlook.data.check_name` without importing torchvision: a ``torchvision:<Class>`` name is
    checked for its form only (the class is looked up by ``check_models`` and when the data is read)."""
    if isinstance(name, str) and name.startswith(TORCHVISION_PREFIX):
        if not name[len(TORCHVISION_PREFIX):].isidentifier():
            raise ConfigError(f"data.name: {name!r} is not 'torchvision:<Class>'")
    elif name not in DATASET_NAMES:
        raise ConfigError(f"data.name: unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}, "
                          "or 'torchvision:<Class>' (e.g. torchvision:SVHN)")
