"""Models: VGG-11/16 (+BN), ResNet-18 (CIFAR variant), a small VGG-style CNN, or any factory.

``build_model(spec, in_channels, num_classes, image_size)`` with
``spec = {"name", "batch_norm", "init", "init_scale", "width", "dropout", "skip"}``
(built-in families) or ``{"name": "torchvision:resnet18" | "package.module:factory", "kwargs",
"adapt", "init"}`` (external factories, :mod:`closerlook.factories`); both take
``analysis_layers`` and ``groups``:

- ``name``: one of :data:`MODEL_NAMES`, or ``module:callable`` returning an ``nn.Module``.
- ``batch_norm`` (bool): BatchNorm2d after every conv. Default False, except
  ``resnet18`` (default True; False replaces its BN layers by identities).
- ``skip`` (bool, ``resnet18`` only, default True): False is the plain 18-layer net
  (He et al. 2016's "plain" baseline): the same blocks without the identity/projection
  shortcut adds (and without the projection convs).
- ``kwargs`` (external only): keyword arguments of the factory; ``adapt``: ``none`` | ``io``
  | ``small_input`` (see :mod:`closerlook.factories`). ``width``, ``init_scale``, ``dropout``,
  ``batch_norm`` and ``skip`` are built-in-only and refused for a factory; ``init`` re-initialises
  the built network (``default`` keeps the factory's own init; ``scaled`` needs ``init_scale``).
- ``analysis_layers``: module names / glob patterns whose outputs are the layers compared
  (forward order); default: the built-in layers below, or for a factory the top-level blocks
  (:func:`closerlook.factories.default_layers`). ``groups``: ``{group: [patterns]}`` for freezing
  (default: the built-in groups, or classifier = the trailing Linear modules).
- ``init``: ``default`` (PyTorch's), ``paper`` (conv N(0, sqrt(2/(k*k*out))),
  linear N(0, 0.01), biases 0, BN weight 1 / bias 0), ``kaiming`` (He normal,
  fan-in, for conv and hidden linear layers: trains deep stacks without BN), or ``scaled`` (paper
  init, then every conv and linear weight multiplied by ``init_scale``: the
  "poor initialisation" variant E).
- ``init_scale`` (float > 0, default 1.0): multiplies every conv and linear
  weight after the chosen init (``scaled`` = ``paper`` with this factor).
- ``width`` (number > 0, default 1): multiplies the conv channel counts
  (classifier input follows; hidden FC sizes stay as specified).
- ``dropout`` (float in [0, 1)): dropout before the first two FC layers;
  default 0.5 for VGG (as the paper), 0.0 for ``small_cnn`` (no Dropout module).

ReLUs are separate, non-inplace modules so that forward hooks capture the
activations. Every model built here carries ``closerlook_layers`` (see
:func:`analysis_layers`), ``closerlook_groups`` (:func:`parameter_groups`) and
``closerlook_spec`` (the normalised spec).

VGG max pools use ``ceil_mode=True``: identical to the usual floor pooling on
32x32 inputs (all sizes even) and lets a 28x28 input go through all five pools
(28-14-7-4-2-1). ``small_cnn`` uses floor pooling (28 -> 3, 32 -> 4).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Iterable

import torch
from torch import nn

from . import factories
from .io import CheckpointError, ConfigError
from .catalog import (BUILTIN_ONLY, EXTERNAL_KEYS, INITS, MODEL_NAMES, SPEC_KEYS, _normalise_external,  # noqa: F401 (torch-free, in catalog: planning imports no torch)
                      _with_layers, arch_key, normalise_spec)


VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "small_cnn": [32, 32, "M", 64, 64, "M", 128, 128, "M"],
}
FC_HIDDEN = {"vgg11": 4096, "vgg16": 4096, "small_cnn": 256}


# ----------------------------------------------------------------------------- spec


def _check_dims(in_channels: Any, num_classes: Any, image_size: Any) -> None:
    for key, val in (("in_channels", in_channels), ("num_classes", num_classes), ("image_size", image_size)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(f"{key}: must be a positive integer, got {val!r}")


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


# ----------------------------------------------------------------------------- VGG-style

class VGG(nn.Module):
    """``features`` (conv [BN] ReLU ... MaxPool) then ``classifier`` (FC stack)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _build_vgg(spec: dict, in_channels: int, num_classes: int, image_size: int) -> VGG:
    name = spec["name"]
    cfg = VGG_CONFIGS[name]
    ceil = name != "small_cnn"
    layers: list[nn.Module] = []
    names: list[tuple[str, int]] = []
    c_in, size, i_conv = in_channels, image_size, 0
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil))
            size = math.ceil(size / 2) if ceil else size // 2
            if size < 1:
                raise ConfigError(f"image_size: {image_size} is too small for the {cfg.count('M')} pooling "
                                  f"layers of {name} (need at least {2 ** cfg.count('M')})")
            continue
        c_out = _ch(v, spec["width"])
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        if spec["batch_norm"]:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU())
        i_conv += 1
        names.append((f"conv{i_conv}", len(layers) - 1))
        c_in = c_out
    features = nn.Sequential(*layers)

    hidden = FC_HIDDEN[name]
    p = spec["dropout"]
    head: list[nn.Module] = []
    fc_names: list[tuple[str, int]] = []
    dims = [c_in * size * size, hidden, hidden]
    for k in range(2):
        if p > 0:
            head.append(nn.Dropout(p))
        head.append(nn.Linear(dims[k], dims[k + 1]))
        head.append(nn.ReLU())
        fc_names.append((f"fc{k + 1}", len(head) - 1))
    head.append(nn.Linear(hidden, num_classes))
    fc_names.append(("fc3", len(head) - 1))
    model = VGG(features, nn.Sequential(*head))
    layers_map = OrderedDict((d, f"features.{i}") for d, i in names)
    layers_map.update((d, f"classifier.{i}") for d, i in fc_names)
    model.closerlook_layers = dict(layers_map)
    model.closerlook_groups = {"classifier": ["classifier."], "features": ["features."]}
    return model


# ----------------------------------------------------------------------------- ResNet-18 (CIFAR)

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int, bn: bool, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not bn)
        self.bn1 = norm(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=not bn)
        self.bn2 = norm(c_out)
        self.shortcut = nn.Sequential()
        if skip and (stride != 1 or c_in != c_out):
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not bn), norm(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x) if self.skip else out)


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem (no max pool), BasicBlocks [2,2,2,2], avgpool, fc; ``skip=False``: the plain net."""

    def __init__(self, in_channels: int, num_classes: int, bn: bool = True, width: float = 1,
                 skip: bool = True) -> None:
        super().__init__()
        widths = [_ch(c, width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=not bn),
                                  nn.BatchNorm2d(widths[0]) if bn else nn.Identity(), nn.ReLU())
        c_in = widths[0]
        for i, (c, stride) in enumerate(zip(widths, (1, 2, 2, 2))):
            blocks = [BasicBlock(c_in, c, stride, bn, skip), BasicBlock(c, c, 1, bn, skip)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build_resnet18(spec: dict, in_channels: int, num_classes: int, image_size: int) -> ResNet18:
    model = ResNet18(in_channels, num_classes, bn=spec["batch_norm"], width=spec["width"], skip=spec["skip"])
    layers = OrderedDict([("stem", "stem")])
    k = 0
    for i in range(1, 5):
        for j in range(2):
            k += 1
            layers[f"block{k}"] = f"layer{i}.{j}"
    layers["fc"] = "fc"
    model.closerlook_layers = dict(layers)
    model.closerlook_groups = {"classifier": ["fc."],
                               "features": ["stem.", "layer1.", "layer2.", "layer3.", "layer4."]}
    return model


# ----------------------------------------------------------------------------- init

def _init_paper(model: nn.Module, scale: float = 1.0) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if scale != 1.0 and isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                m.weight.mul_(scale)


def _init_kaiming(model: nn.Module) -> None:
    """He et al. (2015): N(0, 2/fan_in) for every conv and hidden linear layer, so
    the signal keeps its scale through a deep ReLU stack without batch norm;
    the output layer keeps PyTorch's default. Biases 0."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else None
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not last:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- public API

def build_model(spec: dict, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the model named by ``spec`` (see the module docstring); ConfigError names a bad key.

    An external factory is imported and called: pass only specs the current config names
    (:func:`model_from_checkpoint` checks a checkpoint's against an allow-list first)."""
    spec = normalise_spec(spec)
    _check_dims(in_channels, num_classes, image_size)
    external = factories.is_external(spec["name"])
    if external:
        model = factories.call_factory(spec["name"], spec["kwargs"], in_channels, num_classes, image_size)
        model = factories.adapt(model, spec["adapt"], in_channels, num_classes)
    elif spec["name"] == "resnet18":
        model = _build_resnet18(spec, in_channels, num_classes, image_size)
    else:
        model = _build_vgg(spec, in_channels, num_classes, image_size)
    scale = spec.get("init_scale", 1.0)
    if spec["init"] in ("paper", "scaled"):
        _init_paper(model, scale if spec["init"] == "scaled" else 1.0)
    elif spec["init"] == "kaiming":
        _init_kaiming(model)
    if spec["init"] != "scaled" and scale != 1.0:  # a poor initialisation of any scheme
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.mul_(scale)
    if external or "analysis_layers" in spec or "groups" in spec:
        _attach_layers(model, spec, in_channels, num_classes, image_size, external)
    model.closerlook_spec = dict(spec)
    return model


def _attach_layers(model: nn.Module, spec: dict, in_channels: int, num_classes: int, image_size: int,
                   external: bool) -> None:
    """Analysis layers and parameter groups from the spec's patterns, or a factory's defaults (one forward pass)."""
    order, calls, out = factories.trace(model, in_channels, image_size)
    factories.check_output(out, num_classes, spec.get("adapt"))
    if "analysis_layers" in spec:
        model.closerlook_layers = factories.layers_from_patterns(model, spec["analysis_layers"], order, calls)
    elif external:
        model.closerlook_layers = factories.default_layers(model, order, calls)
    if "groups" in spec:
        model.closerlook_groups = factories.groups_from_patterns(model, spec["groups"], order)
    elif external:
        model.closerlook_groups = factories.default_groups(model, order)


def analysis_layers(model: nn.Module) -> dict[str, str]:
    """Ordered ``{display name: qualified module name}`` whose OUTPUT is that layer's representation.

    Models from :func:`build_model`: VGG/small_cnn give ``conv1..convN`` (the
    ReLU after each conv, after BN when present), ``fc1``, ``fc2`` (their ReLUs)
    and ``fc3`` (the logits Linear); resnet18 gives ``stem``, ``block1..block8``
    (BasicBlock outputs) and ``fc``. Any other module: every ``nn.Conv2d`` and
    ``nn.Linear`` in registration order, keyed by its qualified name (the
    pre-activation outputs).
    """
    layers = getattr(model, "closerlook_layers", None)
    if layers is not None:
        return dict(layers)
    return {n: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """``{"classifier": [prefixes], "features": [prefixes]}`` of parameter names.

    Other modules: ``classifier`` = every ``nn.Linear``, ``features`` = every
    other module that owns parameters directly.
    """
    groups = getattr(model, "closerlook_groups", None)
    if groups is not None:
        return {k: list(v) for k, v in groups.items()}
    classifier, features = [], []
    for n, m in model.named_modules():
        if not any(True for _ in m.parameters(recurse=False)):
            continue
        (classifier if isinstance(m, nn.Linear) else features).append(f"{n}." if n else "")
    return {"classifier": classifier, "features": features}


def resolve_freeze(model: nn.Module, groups) -> list[str]:
    """Parameter names selected by group names (:func:`parameter_groups`) or raw name prefixes."""
    named = [n for n, _ in model.named_parameters()]
    table = parameter_groups(model)
    selected: list[str] = []
    for g in groups:
        prefixes = table.get(g, [g])
        hits = [n for n in named if any(n == p or n.startswith(p.rstrip(".") + ".") or (p.endswith(".") and n.startswith(p))
                                         for p in prefixes)]
        if not hits:
            raise ConfigError(f"freeze.groups: {g!r} is neither a parameter group of this model "
                              f"({', '.join(sorted(table)) or 'none'}) nor a prefix of any parameter name")
        selected += [n for n in hits if n not in selected]
    return selected


def count_macs(model: nn.Module, input_shape) -> int:
    """Forward multiply-adds per image of every Conv2d and Linear (hooks, one zero image).

    ``input_shape`` is ``(C, H, W)`` (or ``(1, C, H, W)``).
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        per_out = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1] \
            if isinstance(mod, nn.Conv2d) else mod.in_features
        total += out.numel() // out.shape[0] * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        x = torch.zeros(shape, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None else torch.float32)
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def model_from_checkpoint(ckpt: dict, path: str = "<checkpoint>", allow: Iterable[str] = ()) -> nn.Module:
    """Rebuild the network of a closerlook checkpoint (``meta.model`` + ``meta.data``) and load its weights.

    A factory outside the built-in families is imported only when ``allow`` (the factories the
    current config names) lists it; otherwise CheckpointError naming ``path``: a checkpoint never
    decides what code runs."""
    meta = ckpt.get("meta") or {}
    if "model" not in meta or "data" not in meta:
        raise CheckpointError(f"{path}: checkpoint meta lacks 'model'/'data' (needed to rebuild the network)")
    check_allowed(meta["model"], allow, path)
    d = meta["data"]
    try:
        model = build_model(meta["model"], d["in_channels"], d["num_classes"], d["image_size"])
    except KeyError as exc:
        raise CheckpointError(f"{path}: meta.data lacks {exc.args[0]!r}") from exc
    if ckpt.get("model") is not None:
        model.load_state_dict(ckpt["model"])
    return model


def check_allowed(spec: Any, allow: Iterable[str], path: str) -> None:
    """CheckpointError naming ``path`` when ``spec`` (a checkpoint's model spec) names a factory ``allow`` lacks."""
    if isinstance(spec, dict):
        factories.check_allowed(spec.get("name"), allow, path)
