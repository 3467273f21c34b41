"""closerlook.align.fx_spec on the torchvision zoo (issue 28): a copy permuted by THIS test's own permutation of
every channel group that can be permuted (written below from each architecture's definition, not from the
derived spec) computes the same function and aligns back exactly with the derived spec.

Why the test permutes on its own: a derived spec that left the hard groups (concatenations, chunks, channel
shuffles, squeeze-excitation gates) unpermuted would align a copy permuted by itself, but not this one.

Channels the test permutes (units in groups of >= 2, random init, 2 x 3 x 32 x 32 inputs, CPU):
mobilenet_v2 9128, mobilenet_v3_small 4872, shufflenet_v2_x0_5 2938, squeezenet1_1 2944, efficientnet_b0 11404
(asserted below, so a changed count shows up).
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from testkit import randomise_bn
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.func import functional_call
from torchvision.ops.misc import SqueezeExcitation

from closerlook import align as A


class Labels:
    """The test's bookkeeping: for each (state-dict key, axis), the (group, unit) at each position (None: fixed)."""

    def __init__(self, sd: dict) -> None:
        self.sd, self.axes, self.n = sd, {}, 0

    def new(self, size: int) -> list:
        self.n += 1
        return [(f"g{self.n}", u) for u in range(size)]

    def put(self, key: str, axis: int, labs: list) -> None:
        assert len(labs) == self.sd[key].shape[axis], (key, axis, len(labs))
        self.axes[(key, axis)] = list(labs)

    def conv(self, prefix: str, inp: list, out: list | None = None, depthwise: bool = False) -> list:
        w = self.sd[f"{prefix}.weight"]
        if depthwise:  # output channel c reads input channel c only: it keeps the input's unit
            out = inp
        else:
            out = self.new(w.shape[0]) if out is None else out
            self.put(f"{prefix}.weight", 1, inp)
        self.put(f"{prefix}.weight", 0, out)
        if f"{prefix}.bias" in self.sd:
            self.put(f"{prefix}.bias", 0, out)
        return out

    def bn(self, prefix: str, labs: list) -> list:
        for k in ("weight", "bias", "running_mean", "running_var"):
            self.put(f"{prefix}.{k}", 0, labs)
        return labs

    def cells(self) -> list[list]:
        """Units of one group that sit on exactly the same axes: any permutation among them keeps the function."""
        where = defaultdict(list)
        for (key, axis), labs in sorted(self.axes.items()):
            for lab in labs:
                if lab is not None:
                    where[lab].append((key, axis))
        cells = defaultdict(list)
        for lab, w in where.items():
            cells[(lab[0], tuple(w))].append(lab)
        return [c for c in cells.values() if len(c) > 1]

    def permute(self, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        to = {}
        for c in self.cells():
            p = torch.randperm(len(c), generator=g).tolist()
            to.update({c[i]: c[p[i]] for i in range(len(c))})
        out = dict(self.sd)
        for (key, axis), labs in self.axes.items():
            pos = {lab: i for i, lab in enumerate(labs) if lab is not None}
            idx = [pos[to.get(lab, lab)] if lab is not None else i for i, lab in enumerate(labs)]
            out[key] = out[key].index_select(axis, torch.tensor(idx))
        return out

    def groups(self) -> list:
        return sorted((len(c), tuple(sorted({ka for lab in c[:1] for ka in _where(self.axes, lab)}))) for c in self.cells())


def _where(axes, lab):
    return [ka for ka, labs in axes.items() if lab in labs]


def _spec_groups(spec: A.PermSpec) -> list:
    return sorted((spec.sizes[p], tuple(sorted({(k, i) for k, i, _ in us}))) for p, us in spec.users().items())


FIXED3 = [None] * 3


def _mobilenet_v2(net, L):
    s = L.bn("features.0.1", L.conv("features.0.0", FIXED3))
    for i in range(1, 18):
        blk, p = net.features[i], f"features.{i}.conv"
        h, j = s, 0
        if len(blk.conv) == 4:  # expansion 1x1
            h, j = L.bn(f"{p}.0.1", L.conv(f"{p}.0.0", s)), 1
        h = L.bn(f"{p}.{j}.1", L.conv(f"{p}.{j}.0", h, depthwise=True))
        s = L.bn(f"{p}.{j + 2}", L.conv(f"{p}.{j + 1}", h, out=s if blk.use_res_connect else None))
    s = L.bn("features.18.1", L.conv("features.18.0", s))
    L.conv("classifier.1", s, out=[None] * 10)


def _mbconv(L, blk, prefix, s):
    """torchvision's MobileNetV3 InvertedResidual / EfficientNet MBConv: [expand], depthwise, [SE], project."""
    h, kids = s, list(blk.block.named_children())
    for k, (n, m) in enumerate(kids):
        q = f"{prefix}.block.{n}"
        if isinstance(m, SqueezeExcitation):  # scale * h: the gate's output units are h's units
            L.conv(f"{q}.fc2", L.conv(f"{q}.fc1", h), out=h)
            continue
        last = k == len(kids) - 1
        if m[0].groups > 1:
            h = L.conv(f"{q}.0", h, depthwise=True)
        else:
            h = L.conv(f"{q}.0", h, out=s if last and blk.use_res_connect else None)
        L.bn(f"{q}.1", h)
    return h


def _mobilenet_v3_small(net, L):
    s = L.bn("features.0.1", L.conv("features.0.0", FIXED3))
    for i in range(1, 12):
        s = _mbconv(L, net.features[i], f"features.{i}", s)
    s = L.bn("features.12.1", L.conv("features.12.0", s))
    L.conv("classifier.3", L.conv("classifier.0", s), out=[None] * 10)


def _efficientnet_b0(net, L):
    s = L.bn("features.0.1", L.conv("features.0.0", FIXED3))
    for i in range(1, 8):
        for j, blk in enumerate(net.features[i]):
            s = _mbconv(L, blk, f"features.{i}.{j}", s)
    s = L.bn("features.8.1", L.conv("features.8.0", s))
    L.conv("classifier.1", s, out=[None] * 10)


def _squeezenet1_1(net, L):
    s = L.conv("features.0", FIXED3)
    for i, m in enumerate(net.features):
        if isinstance(m, torchvision.models.squeezenet.Fire):  # cat([expand1x1, expand3x3]): both groups side by side
            z = L.conv(f"features.{i}.squeeze", s)
            s = L.conv(f"features.{i}.expand1x1", z) + L.conv(f"features.{i}.expand3x3", z)
    L.conv("classifier.1", s, out=[None] * 10)


def _shufflenet_v2_x0_5(net, L):
    s = L.bn("conv1.1", L.conv("conv1.0", FIXED3))
    for st in ("stage2", "stage3", "stage4"):
        for j, blk in enumerate(getattr(net, st)):
            p = f"{st}.{j}"
            if blk.stride > 1:  # both branches read the whole stream
                b1 = L.bn(f"{p}.branch1.1", L.conv(f"{p}.branch1.0", s, depthwise=True))
                x1, x2 = L.bn(f"{p}.branch1.3", L.conv(f"{p}.branch1.2", b1)), s
            else:  # x.chunk(2): the first half passes, the second feeds branch2
                x1, x2 = s[:len(s) // 2], s[len(s) // 2:]
            h = L.bn(f"{p}.branch2.1", L.conv(f"{p}.branch2.0", x2))
            h = L.bn(f"{p}.branch2.4", L.conv(f"{p}.branch2.3", h, depthwise=True))
            h = L.bn(f"{p}.branch2.6", L.conv(f"{p}.branch2.5", h))
            cat = x1 + h  # channel_shuffle(cat, 2): output 2k = cat[k], 2k + 1 = cat[n/2 + k]
            s = [c for pair in zip(cat[:len(cat) // 2], cat[len(cat) // 2:]) for c in pair]
    s = L.bn("conv5.1", L.conv("conv5.0", s))
    L.conv("fc", s, out=[None] * 10)


ZOO = {  # model -> (the test's labeller, channels it permutes)
    "mobilenet_v2": (_mobilenet_v2, 9128),
    "mobilenet_v3_small": (_mobilenet_v3_small, 4872),
    "shufflenet_v2_x0_5": (_shufflenet_v2_x0_5, 2938),
    "squeezenet1_1": (_squeezenet1_1, 2944),
    "efficientnet_b0": (_efficientnet_b0, 11404),
}




def _check_same_function(net, sd, shuffled, x):
    with torch.no_grad():
        y0, y1 = functional_call(net, sd, (x,)), functional_call(net, shuffled, (x,))
    scale = float(y0.abs().max())
    assert scale > 1e-6  # a non-trivial output
    # float32: the permuted sums run in another order (~1e-7 relative per sum, dozens of layers deep)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_permuted_copy_aligns_back_exactly(name):
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(num_classes=10).eval()
    sd = randomise_bn(net.state_dict(), 1)
    labeller, n_channels = ZOO[name]
    L = Labels(sd)
    labeller(net, L)
    assert sum(len(c) for c in L.cells()) == n_channels
    shuffled = L.permute(seed=3)
    changed = [k for k in sd if not torch.equal(shuffled[k], sd[k])]
    assert len(changed) > len(sd) // 2, changed  # the copy really is shuffled, BN entries included
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _check_same_function(net, sd, shuffled, x)

    spec = A.fx_spec(net)
    # the derived spec permutes exactly the groups the test permutes (same sizes, same state-dict axes)
    assert _spec_groups(spec) == L.groups()
    found = A.weight_matching(spec, sd, shuffled)
    back = A.apply_permutation(spec, found, shuffled)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k  # exact: a permutation copies values


def _hand_spec_mobilenet_v2(net) -> A.PermSpec:
    """The hand-written spec shown in docs/alignment.md (run from the page itself, so the page stays right):
    one group per block's hidden width, one per residual stream."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "alignment.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def mobilenet_v2_spec" in b)
    scope: dict = {}
    exec(block, scope)  # noqa: S102 - our own documentation
    return scope["mobilenet_v2_spec"](net)


def test_mobilenet_v2_derived_spec_permutes_the_hand_written_groups():
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(num_classes=10).eval()
    hand = _hand_spec_mobilenet_v2(net)
    hand.check(net.state_dict())
    assert _spec_groups(A.fx_spec(net)) == _spec_groups(hand)
    # and the hand-written spec aligns the test's permuted copy back too
    sd = randomise_bn(net.state_dict(), 2)
    L = Labels(sd)
    _mobilenet_v2(net, L)
    shuffled = L.permute(seed=5)
    back = A.apply_permutation(hand, A.weight_matching(hand, sd, shuffled), shuffled)
    assert all(torch.equal(back[k], sd[k]) for k in sd)



def _aligns_back(net: nn.Module, spec, x: torch.Tensor) -> None:
    """A random permutation under ``spec`` computes the same function, and weight matching undoes it exactly."""
    sd = net.state_dict()
    shuffled = A.apply_permutation(spec, A.random_permutation(spec, seed=1), sd)
    _check_same_function(net, sd, shuffled, x)
    back = A.apply_permutation(spec, A.weight_matching(spec, sd, shuffled), shuffled)
    assert all(torch.equal(back[k], sd[k]) for k in sd)  # exact: a permutation and its inverse move values

class _Acts(nn.Module):
    """Every activation form in one conv stack: module forms, F.* functions, torch.* functions, tensor methods."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 6, 6, 3, padding=1) for i in range(5))
        self.mods = nn.Sequential(nn.ReLU6(), nn.Hardswish(), nn.Hardsigmoid(), nn.ELU(), nn.SELU(), nn.CELU(),
                                  nn.Mish(), nn.GELU(), nn.SiLU(), nn.Dropout(0.2), nn.Identity(), nn.Softplus())
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.mods(self.convs[0](x))
        x = torch.tanh(F.gelu(F.silu(F.relu6(self.convs[1](x)))))
        x = F.hardswish(F.hardsigmoid(F.elu(F.selu(F.celu(F.mish(F.leaky_relu(self.convs[2](x), 0.1)))))))
        x = torch.sigmoid(F.relu(F.dropout(self.convs[3](x), 0.1, self.training))).relu()
        x = torch.relu(self.convs[4](x)).tanh().sigmoid()
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_activation_functions_and_modules_pass_permutations():
    torch.manual_seed(0)
    net = _Acts().eval()
    spec = A.fx_spec(net)
    assert sorted(spec.sizes.values()) == [6] * 5  # each conv's outputs, through every activation form
    _aligns_back(net, spec, torch.randn(2, 3, 8, 8))


class _Gated(nn.Module):
    """A grouped conv (2 groups of 4), a product of two branches, a flatten without pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3)
        self.g = nn.Conv2d(8, 8, 1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.g(self.a(x) * torch.sigmoid(self.b(x))), 1))


def test_grouped_conv_gate_and_flatten():
    torch.manual_seed(0)
    net = _Gated().eval()
    spec = A.fx_spec(net, example=torch.randn(2, 3, 6, 6))
    # a and b tied by the product; g's two input groups share one permutation of 4 (channels u and 4 + u move
    # together), g's outputs permute within each of its two groups
    assert sorted(spec.sizes.values()) == [4, 4, 4]
    assert isinstance(spec.axes["a.weight"][0], A.Mixed) and spec.axes["g.weight"][1] is not None
    assert spec.axes["fc.weight"][1] is not None
    _aligns_back(net, spec, torch.randn(2, 3, 6, 6))


class _Mixer(nn.Module):
    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, c // 2, 2 * h, w)  # two channels side by side in one: not a permutation of channels


class _WithMixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix, self.head = nn.Conv2d(3, 8, 3), _Mixer(), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.mix(self.conv(x))).mean((2, 3))


def test_a_reshape_that_mixes_channels_is_refused_naming_its_module():
    with pytest.raises(A.AlignError) as ei:
        A.fx_spec(_WithMixer())
    msg = str(ei.value)
    assert "module 'head' (Conv2d)" in msg and "'view' inside module 'mix' (_Mixer)" in msg, msg
    assert "mix channels" in msg and "docs/alignment.md" in msg, msg


class _MobileNetWithSpec(nn.Module):
    """How a factory hands its hand-written spec to the pipeline: a ``closerlook_permutation_spec`` method."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.mobilenet_v2(num_classes=10)

    def forward(self, x):
        return self.net(x)

    def closerlook_permutation_spec(self) -> A.PermSpec:
        hand = _hand_spec_mobilenet_v2(self.net)
        return A.PermSpec(dict(hand.sizes), {f"net.{k}": v for k, v in hand.axes.items()})


def test_a_models_own_spec_is_used():
    torch.manual_seed(0)
    model = _MobileNetWithSpec().eval()
    spec = A.permutation_spec(model)
    assert "features.1.hidden" not in spec.sizes and "features.6.hidden" in spec.sizes  # the hand-written names
    model.closerlook_permutation_spec = lambda: "not a spec"
    with pytest.raises(A.AlignError, match="not a closerlook.align.PermSpec"):
        A.permutation_spec(model)
