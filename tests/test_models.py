import copy

import pytest
import torch
from torch import nn

from closerlook.io import ConfigError
from closerlook.models import (MODEL_NAMES, VGG_CONFIGS, analysis_layers, build_model, count_macs,
                               parameter_groups)


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def _vgg_expected_params(cfg, in_ch, n_cls, hidden, flat, bn=False):
    total, c = 0, in_ch
    for v in cfg:
        if v == "M":
            continue
        total += c * v * 9 + v + (2 * v if bn else 0)
        c = v
    return total + (flat * hidden + hidden) + (hidden * hidden + hidden) + (hidden * n_cls + n_cls)


def test_vgg16_param_count():
    m = build_model({"name": "vgg16"}, 3, 10, 32)
    expected = _vgg_expected_params(VGG_CONFIGS["vgg16"], 3, 10, 4096, 512)
    assert _n_params(m) == expected
    assert 33_550_000 < expected < 33_650_000  # VGG-16 for CIFAR-10: 33.6M parameters
    bn = build_model({"name": "vgg16", "batch_norm": True}, 3, 10, 32)
    assert _n_params(bn) == _vgg_expected_params(VGG_CONFIGS["vgg16"], 3, 10, 4096, 512, bn=True)
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 13
    assert sum(isinstance(x, nn.Linear) for x in m.modules()) == 3
    assert sum(isinstance(x, nn.Dropout) for x in m.modules()) == 2
    v11 = build_model({"name": "vgg11"}, 3, 10, 32)
    assert sum(isinstance(x, nn.Conv2d) for x in v11.modules()) == 8


def test_small_cnn_structure():
    m = build_model({"name": "small_cnn"}, 1, 10, 28)
    assert m.classifier[0].in_features == 1152  # 128 * 3 * 3
    assert _n_params(m) == _vgg_expected_params(VGG_CONFIGS["small_cnn"], 1, 10, 256, 1152)
    assert not any(isinstance(x, nn.Dropout) for x in m.modules())
    assert build_model({"name": "small_cnn"}, 3, 10, 32).classifier[0].in_features == 128 * 16
    d = build_model({"name": "small_cnn", "dropout": 0.3}, 1, 10, 28)
    assert sum(isinstance(x, nn.Dropout) for x in d.modules()) == 2
    w = build_model({"name": "small_cnn", "width": 2}, 1, 10, 28)
    assert w.features[0].out_channels == 64 and w.classifier[0].in_features == 2304


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
@pytest.mark.parametrize("bn", [False, True])
def test_forward_shapes_and_hooks(name, shape, bn):
    c, s = shape
    torch.manual_seed(0)
    m = build_model({"name": name, "batch_norm": bn}, c, 7, s).eval()
    layers = analysis_layers(m)
    expected_n = {"vgg16": 16, "vgg11": 11, "small_cnn": 9, "resnet18": 10}[name]
    assert len(layers) == expected_n
    modules = dict(m.named_modules())
    captured = {}
    handles = [modules[q].register_forward_hook(lambda mod, i, o, d=d: captured.__setitem__(d, o))
               for d, q in layers.items()]
    with torch.no_grad():
        out = m(torch.randn(2, c, s, s))
    for h in handles:
        h.remove()
    assert out.shape == (2, 7)
    assert list(captured) == list(layers)  # hooks fire in layer order
    names = list(layers)
    assert torch.equal(captured[names[-1]], out)  # exact: the hook sees the same logits tensor
    if name != "resnet18":
        convs = [k for k in names if k.startswith("conv")]
        assert names == convs + ["fc1", "fc2", "fc3"]
        for k in convs + ["fc1", "fc2"]:
            assert isinstance(modules[layers[k]], nn.ReLU) and captured[k].min() >= 0
        assert captured["conv1"].shape[:2] == (2, m.features[0].out_channels)
        assert captured["conv1"].shape[2:] == (s, s)
        assert captured["fc1"].shape == (2, m.classifier[-1].in_features)
    else:
        assert names[0] == "stem" and names[-1] == "fc"
        assert captured["stem"].shape == (2, 64, s, s)
        assert captured["block8"].shape == (2, 512, -(-s // 8), -(-s // 8))


def test_parameter_groups_cover_all_parameters():
    for name in MODEL_NAMES:
        m = build_model({"name": name}, 3, 10, 32)
        groups = parameter_groups(m)
        assert set(groups) == {"classifier", "features"}
        pnames = [n for n, _ in m.named_parameters()]
        cls = [n for n in pnames if any(n.startswith(p) for p in groups["classifier"])]
        feat = [n for n in pnames if any(n.startswith(p) for p in groups["features"])]
        assert sorted(cls + feat) == sorted(pnames) and not set(cls) & set(feat)
        linears = {n for n, x in m.named_modules() if isinstance(x, nn.Linear)}
        assert {n.rsplit(".", 1)[0] for n in cls} == linears


def test_attributes_survive_copy_and_fallback():
    m = build_model({"name": "small_cnn", "batch_norm": True}, 1, 10, 28)
    assert analysis_layers(copy.deepcopy(m)) == analysis_layers(m)
    assert analysis_layers(m)["conv1"] == "features.2"  # conv, BN, ReLU
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    assert analysis_layers(plain) == {"0": "0", "3": "3"}
    assert parameter_groups(plain) == {"classifier": ["3."], "features": ["0."]}


def test_paper_init_statistics():
    torch.manual_seed(0)
    m = build_model({"name": "vgg16", "batch_norm": True, "init": "paper"}, 3, 10, 32)
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            std = (2.0 / (9 * mod.out_channels)) ** 0.5
            assert mod.weight.std().item() == pytest.approx(std, rel=0.05)
            assert abs(mod.weight.mean().item()) < 0.1 * std
            assert mod.bias.abs().max() == 0
        elif isinstance(mod, nn.Linear):
            assert mod.weight.std().item() == pytest.approx(0.01, rel=0.05)
            assert mod.bias.abs().max() == 0
        elif isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
    torch.manual_seed(0)
    paper = build_model({"name": "small_cnn", "init": "paper"}, 1, 10, 28)
    torch.manual_seed(0)
    scaled = build_model({"name": "small_cnn", "init": "scaled", "init_scale": 3.0}, 1, 10, 28)
    for (n, a), (_, b) in zip(paper.named_parameters(), scaled.named_parameters()):
        assert torch.allclose(b, 3.0 * a), n
    torch.manual_seed(0)
    default = build_model({"name": "small_cnn"}, 1, 10, 28)
    assert default.features[0].bias.abs().sum() > 0  # PyTorch default init keeps nonzero biases


@pytest.mark.parametrize("spec,key", [
    ({"name": "vgg19"}, "name"),
    ({"name": "vgg16", "batch_norm": "yes"}, "batch_norm"),
    ({"name": "vgg16", "init": "xavier"}, "init"),
    ({"name": "vgg16", "init": "scaled", "init_scale": 0}, "init_scale"),
    ({"name": "vgg16", "init_scale": -1.0}, "init_scale"),
    ({"name": "small_cnn", "width": 0}, "width"),
    ({"name": "small_cnn", "dropout": 1.0}, "dropout"),
    ({"name": "small_cnn", "depth": 3}, "depth"),
])
def test_bad_specs(spec, key):
    with pytest.raises(ConfigError, match=key):
        build_model(spec, 3, 10, 32)


def test_unknown_name_lists_known_and_small_images():
    with pytest.raises(ConfigError) as err:
        build_model({"name": "lenet"}, 1, 10, 28)
    assert "lenet" in str(err.value) and all(n in str(err.value) for n in MODEL_NAMES)
    with pytest.raises(ConfigError, match="image_size"):
        build_model({"name": "small_cnn"}, 1, 10, 7)
    with pytest.raises(ConfigError, match="image_size"):
        build_model({"name": "small_cnn"}, 1, 10, 0)


def test_count_macs():
    m = build_model({"name": "small_cnn"}, 1, 10, 28)
    expected = (28 * 28 * 32 * 9 * 1 + 28 * 28 * 32 * 9 * 32 + 14 * 14 * 64 * 9 * 32 + 14 * 14 * 64 * 9 * 64
                + 7 * 7 * 128 * 9 * 64 + 7 * 7 * 128 * 9 * 128 + 1152 * 256 + 256 * 256 + 256 * 10)
    assert count_macs(m, (1, 28, 28)) == expected
    m.train()
    assert count_macs(m, (1, 1, 28, 28)) == expected and m.training
    vgg = build_model({"name": "vgg16"}, 3, 10, 32)
    size, c, conv = 32, 3, 0
    for v in VGG_CONFIGS["vgg16"]:
        if v == "M":
            size //= 2
        else:
            conv += size * size * v * 9 * c
            c = v
    assert count_macs(vgg, (3, 32, 32)) == conv + 512 * 4096 + 4096 * 4096 + 4096 * 10
