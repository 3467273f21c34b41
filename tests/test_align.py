"""closerlook.align: weight matching recovers a hidden permutation exactly, permutations keep the
function, the fx-derived spec agrees with the built-in one, REPAIR restores the channel statistics."""
from __future__ import annotations

import pytest
import torch
from testkit import randomise_bn
import torchvision
from torch import nn
from torch.func import functional_call

from closerlook import align as A
from closerlook.models import build_model

FAMILIES = [
    {"name": "small_cnn", "batch_norm": False},
    {"name": "small_cnn", "batch_norm": True},
    {"name": "vgg16", "batch_norm": True, "width": 0.125},
    {"name": "resnet18", "batch_norm": True, "width": 0.125},
    {"name": "resnet18", "batch_norm": False, "width": 0.125},
]


def _net(spec: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec, 1, 10, 28).eval()




def _canonical(spec: A.PermSpec) -> dict:
    """The spec with each permutation renamed after the first (key, axis) it acts on: comparable across namings."""
    first = {}
    for key in sorted(spec.axes):
        for i, ax in enumerate(spec.axes[key]):
            if ax is not None:
                first.setdefault(ax[0], f"{key}:{i}")
    return {k: tuple(None if ax is None else (first[ax[0]], ax[1]) for ax in axes) for k, axes in spec.axes.items()}


@pytest.mark.parametrize("mspec", FAMILIES, ids=lambda s: f"{s['name']}-bn{int(s['batch_norm'])}")
def test_permuted_copy_aligns_back_exactly(mspec):
    net = _net(mspec)
    sd = randomise_bn(net.state_dict(), 1)
    spec = A.builtin_spec(net)
    hidden = A.random_permutation(spec, seed=3)
    shuffled = A.apply_permutation(spec, hidden, sd)
    assert any(not torch.equal(shuffled[k], sd[k]) for k in spec.axes)  # the copy really is shuffled
    found = A.weight_matching(spec, sd, shuffled)
    back = A.apply_permutation(spec, found, shuffled)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k  # exact: a permutation copies values, it computes nothing


@pytest.mark.parametrize("mspec", FAMILIES, ids=lambda s: f"{s['name']}-bn{int(s['batch_norm'])}")
def test_permutation_leaves_the_function_unchanged(mspec):
    net = _net(mspec)
    sd = randomise_bn(net.state_dict(), 2)
    spec = A.builtin_spec(net)
    shuffled = A.apply_permutation(spec, A.random_permutation(spec, seed=5), sd)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y0, y1 = functional_call(net, sd, (x,)), functional_call(net, shuffled, (x,))
    assert y0.abs().max() > 1e-3  # a non-trivial output
    # float32: the permuted sums run in another order; errors ~ 1e-7 relative per sum, logits O(1) here
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mspec", FAMILIES, ids=lambda s: f"{s['name']}-bn{int(s['batch_norm'])}")
def test_fx_spec_agrees_with_builtin(mspec):
    net = _net(mspec)
    assert _canonical(A.fx_spec(net)) == _canonical(A.builtin_spec(net))


def test_torchvision_resnet18_through_fx():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    spec = A.permutation_spec(net)
    # residual streams tied: one group per stage stream, one per block's inner conv
    assert len(spec.sizes) == 4 + 8
    sd = randomise_bn(net.state_dict(), 4)
    shuffled = A.apply_permutation(spec, A.random_permutation(spec, seed=7), sd)
    back = A.apply_permutation(spec, A.weight_matching(spec, sd, shuffled), shuffled)
    assert all(torch.equal(back[k], sd[k]) for k in sd)  # exact: permutations copy values
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(functional_call(net, shuffled, (x,)), functional_call(net, sd, (x,)),
                                   rtol=1e-4, atol=1e-5)  # float32 reassociation, as above


class _WithLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.LayerNorm([4, 26, 26])
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.norm(self.conv(x)), 1))


def test_fx_names_the_module_it_cannot_follow():
    with pytest.raises(A.AlignError, match=r"module 'norm' \(LayerNorm\).*docs/alignment.md"):
        A.fx_spec(_WithLayerNorm())


def test_align_settings_checked():
    net = _net(FAMILIES[0])
    with pytest.raises(A.AlignError, match="align.method"):
        A.align(net, net.state_dict(), net.state_dict(), {"method": "activations"})
    sd = net.state_dict()
    assert A.align(net, sd, sd, {"method": "none"})["features.0.weight"] is sd["features.0.weight"]


def _stats(net, state, name, batches):
    return A._channel_stats(net, state, name, batches, None)


def test_repair_restores_interpolated_channel_statistics():
    a_net, b_net = _net(FAMILIES[0], 0), _net(FAMILIES[0], 1)
    a, b = a_net.state_dict(), b_net.state_dict()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, 1, 28, 28, generator=g), torch.zeros(64, dtype=torch.long)) for _ in range(2)]
    mid = A.interpolate(a, b, 0.5)
    fixed = A.repair(a_net, mid, (a, b), 0.5, batches)
    layers = [n for n, m in a_net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    for name in layers:
        (ma, sa), (mb, sb) = _stats(a_net, a, name, batches), _stats(a_net, b, name, batches)
        m, s = _stats(a_net, fixed, name, batches)
        # float64 statistics of float32 activations; channels have std ~ 0.1-1
        torch.testing.assert_close(s, 0.5 * (sa + sb), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m, 0.5 * (ma + mb), rtol=1e-4, atol=1e-5)
    # the collapse it corrects: the plain midpoint's deep channels have less spread than either end
    _, s_mid = _stats(a_net, mid, layers[-1], batches)
    _, s_a = _stats(a_net, a, layers[-1], batches)
    assert s_mid.mean() < s_a.mean()


def test_repair_needs_biases():
    net = _net(FAMILIES[3])  # resnet18 with BN: convs without bias
    sd = net.state_dict()
    with pytest.raises(A.AlignError, match="no bias"):
        A.repair(net, sd, (sd, sd), 0.5, [(torch.randn(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))])
