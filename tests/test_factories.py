"""Models from outside (torchvision, any module:factory), configured layers and groups, skip connections,
torchvision data sets, and the allow-list that keeps a checkpoint from choosing the code that runs."""
import gzip
import shutil
from pathlib import Path

import pytest
import torch
import toy_factories
from torch import nn

from closerlook import data, models
from closerlook.io import CheckpointError, CloserlookError, ConfigError
from closerlook.models import analysis_layers, arch_key, build_model, model_from_checkpoint, parameter_groups, resolve_freeze
from closerlook.spec import validate_run_spec

TV = "torchvision:resnet18"
REPO = Path(__file__).resolve().parents[1]


def test_torchvision_resnet18_adapted_to_grey_28px_data():
    m = build_model({"name": TV, "adapt": "io"}, 1, 10, 28)
    assert m.conv1.in_channels == 1 and m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    assert m.fc.out_features == 10 and isinstance(m.maxpool, nn.MaxPool2d)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # the default layers: top-level blocks in forward order, Sequentials opened, nothing inside a block
    assert list(analysis_layers(m)) == ["conv1", "bn1", "relu", "maxpool"] + [
        f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["avgpool", "fc"]
    g = parameter_groups(m)
    assert g["classifier"] == ["fc."] and "conv1." in g["features"] and "layer4.1.conv2." in g["features"]
    assert resolve_freeze(m, ["classifier"]) == ["fc.weight", "fc.bias"]


def test_small_input_adapter_gives_the_cifar_stem():
    m = build_model({"name": TV, "adapt": "small_input"}, 3, 10, 32)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.padding == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)
    seen = {}
    m.layer1.register_forward_hook(lambda _m, _i, o: seen.update(layer1=o.shape))  # returns None: output kept
    m.eval()(torch.zeros(1, 3, 32, 32))
    assert seen["layer1"][-2:] == (32, 32)  # the ImageNet stem would leave 8x8
    assert "maxpool" not in analysis_layers(m)  # an identity now: no representation of its own


def test_factory_receives_only_the_dimensions_its_signature_names():
    toy_factories.CALLS.clear()
    m = build_model({"name": "toy_factories:named", "kwargs": {"hidden": 6}}, 3, 7, 20)
    assert toy_factories.CALLS[-1] == {"in_channels": 3, "num_classes": 7, "hidden": 6}
    assert m(torch.zeros(1, 3, 20, 20)).shape == (1, 7)
    assert parameter_groups(m) == {"classifier": ["4.", "6."], "features": ["0."]}  # the trailing Linears
    assert list(analysis_layers(m)) == ["0", "1", "2", "3", "4", "5", "6"]
    build_model({"name": "toy_factories:kwargs_only", "kwargs": {"n": 4}}, 1, 4, 9)
    assert toy_factories.CALLS[-1] == {"n": 4}  # **kwargs does not count as naming a parameter


def test_configured_layers_and_groups_by_glob_in_forward_order():
    spec = {"name": TV, "adapt": "io", "analysis_layers": ["fc", "layer*", "relu"],
            "groups": {"classifier": ["fc", "layer4.*"]}}
    m = build_model(spec, 1, 10, 28)
    assert list(analysis_layers(m)) == ["relu", "layer1", "layer2", "layer3", "layer4", "fc"]  # '*' stays in a segment
    frozen = resolve_freeze(m, ["classifier"])
    assert frozen[-2:] == ["fc.weight", "fc.bias"] and all(n.startswith(("fc.", "layer4.")) for n in frozen)
    assert not any(n.startswith("layer4.") for p in parameter_groups(m)["features"] for n in [p])
    # a built-in family takes the same keys; without them its layers stay as they are
    b = build_model({"name": "resnet18", "width": 0.25, "analysis_layers": ["layer*.*"]}, 1, 10, 28)
    assert list(analysis_layers(b)) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert list(analysis_layers(build_model({"name": "resnet18", "width": 0.25}, 1, 10, 28)))[:2] == ["stem", "block1"]


@pytest.mark.parametrize("spec, key, text", [
    ({"name": TV, "adapt": "io", "analysis_layers": ["layer9"]}, "model.analysis_layers", "layer4.1.bn2"),
    ({"name": TV, "adapt": "io", "groups": {"classifier": ["head.*"]}}, "model.groups.classifier", "matches no module"),
    ({"name": TV, "adapt": "io", "analysis_layers": ["layer1.0.relu"]}, "model.analysis_layers", "runs 2 times"),
    ({"name": TV}, "model", "forward pass on one 1x28x28 image failed"),  # 3-channel stem, grey data
    ({"name": TV, "kwargs": {"bogus": 1}}, "model.kwargs", "unexpected keyword argument 'bogus'"),
    ({"name": "no_such_package_xyz:make"}, "model.name", "cannot import module 'no_such_package_xyz'"),
    ({"name": "toy_factories:missing"}, "model.name", "has no attribute 'missing'"),
    ({"name": "toy_factories:CALLS"}, "model.name", "not a callable"),
    ({"name": "toy_factories:not_a_module"}, "model.name", "returned a int, not a torch.nn.Module"),
    ({"name": "torchvision:resnet 18"}, "model.name", "not a factory name"),
    ({"name": TV, "adapt": "sideways"}, "model.adapt", "sideways"),
    ({"name": TV, "init": "scaled"}, "model.init", "built-in-only"),
    ({"name": "small_cnn", "kwargs": {"a": 1}}, "model.kwargs", "only for external factories"),
    ({"name": "vgg11", "skip": False}, "model.skip", "only resnet18"),
])
def test_bad_model_specs_name_the_key(spec, key, text):
    with pytest.raises(ConfigError) as ei:
        build_model(spec, 1, 10, 28)
    assert str(ei.value).startswith(key) and text in str(ei.value), str(ei.value)


def test_wrong_number_of_logits_is_refused():
    with pytest.raises(ConfigError, match=r"output on one image is \(1, 1000\).*kwargs: \{num_classes: 10\} or adapt: io"):
        build_model({"name": TV}, 3, 10, 32)
    assert build_model({"name": TV, "kwargs": {"num_classes": 10}}, 3, 10, 32).fc.out_features == 10


def test_squeezenet_with_adapt_io_is_told_to_pass_num_classes():
    """squeezenet's classifier is a 1x1 conv, which adapt does not replace: suggesting adapt: io again is no help."""
    with pytest.raises(ConfigError) as ei:
        build_model({"name": "torchvision:squeezenet1_1", "adapt": "io"}, 1, 10, 32)
    msg = str(ei.value)
    assert "adapt: io was given" in msg and "kwargs: {num_classes: 10}" in msg and "or adapt: io" not in msg, msg
    assert build_model({"name": "torchvision:squeezenet1_1", "adapt": "io", "kwargs": {"num_classes": 10}},
                       1, 10, 32) is not None


@pytest.mark.parametrize("key, value", [("width", 0.5), ("init_scale", 2.0), ("dropout", 0.1),
                                        ("batch_norm", True), ("skip", False)])
def test_builtin_only_keys_are_refused_for_an_external_factory(key, value):
    with pytest.raises(ConfigError, match=rf"^model\.{key}: a built-in-only key"):
        models.normalise_spec({"name": TV, key: value})


def test_init_reinitialises_an_external_model():
    torch.manual_seed(0)
    m = build_model({"name": TV, "adapt": "io", "init": "paper"}, 1, 10, 28)
    # paper init: Linear weights N(0, 0.01), biases 0 (torchvision's default fc is U(+-1/sqrt(512)) = +-0.044)
    assert float(m.fc.weight.detach().std()) == pytest.approx(0.01, rel=0.1)  # 5,120 draws: std within 10 %
    assert float(m.fc.bias.detach().abs().max()) == 0.0  # exact: zeros_ writes zeros


def test_plain_resnet18_has_no_shortcut_adds():
    torch.manual_seed(0)
    plain = build_model({"name": "resnet18", "width": 0.25, "skip": False}, 3, 10, 32).eval()
    skip = build_model({"name": "resnet18", "width": 0.25}, 3, 10, 32).eval()
    assert not any("shortcut" in n for n, _ in plain.named_parameters())
    assert any("shortcut" in n for n, _ in skip.named_parameters())
    skip.load_state_dict(plain.state_dict(), strict=False)  # every plain weight has its twin
    x = torch.randn(2, 16, 32, 32)
    for net in (plain, skip):
        b = net.layer1[0]
        branch = b.bn2(b.conv2(b.relu1(b.bn1(b.conv1(x)))))
        expected = torch.relu(branch + x) if net is skip else torch.relu(branch)
        # same ops in the same order on float32: equal up to rounding of the final add (1e-6 of O(1) values)
        assert torch.allclose(b(x), expected, atol=1e-6, rtol=0)
    assert arch_key({"name": "resnet18", "skip": False}) != arch_key({"name": "resnet18"})


def _checkpoint(spec, c=1, n=10, s=28):
    torch.manual_seed(3)
    m = build_model(spec, c, n, s)
    return m, {"model": m.state_dict(), "meta": {"model": spec, "data": {"in_channels": c, "num_classes": n,
                                                                           "image_size": s}}}


def test_checkpoint_of_an_external_model_rebuilds_only_when_allowed():
    spec = {"name": TV, "adapt": "io", "analysis_layers": ["layer*", "fc"]}
    m, ck = _checkpoint(spec)
    back = model_from_checkpoint(ck, "x.pt", allow=[TV])
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), back.state_dict().values()))  # exact: copies
    assert analysis_layers(back) == analysis_layers(m)
    with pytest.raises(CheckpointError, match=r"^x\.pt: the checkpoint names the model factory 'torchvision:resnet18'"):
        model_from_checkpoint(ck, "x.pt")
    with pytest.raises(CheckpointError, match="refusing to import"):
        model_from_checkpoint(ck, "x.pt", allow=["toy_factories:named"])


def test_run_spec_checks_the_model_against_known_data_before_training(fmnist_dir):
    spec = {"data": {"name": "fashion_mnist", "root": str(fmnist_dir)}, "model": {"name": TV, "adapt": "io",
                                                                                  "analysis_layers": ["nope*"]}}
    with pytest.raises(ConfigError, match="model.analysis_layers: 'nope\\*' matches no module"):
        validate_run_spec(spec)
    spec["model"]["analysis_layers"] = ["layer*"]
    spec["freeze"] = {"groups": ["classifier"], "iterations": 3}
    assert validate_run_spec(spec)["model"] == spec["model"]  # the spec as given (its hash is unchanged)


# ----------------------------------------------------------------------------- torchvision data sets

@pytest.fixture(scope="module")
def tv_fmnist_root(tmp_path_factory, fmnist_dir):
    """torchvision's FashionMNIST layout (root/FashionMNIST/raw/*-ubyte) from Debian's .gz files."""
    root = tmp_path_factory.mktemp("tv")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in fmnist_dir.glob("*-ubyte.gz"):
        with gzip.open(gz, "rb") as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def test_torchvision_dataset_class_reads_the_same_images_and_caches(tv_fmnist_root, fmnist_dir, tmp_path):
    name = "torchvision:FashionMNIST"
    x, y, info = data.load_split(name, "test", root=tv_fmnist_root, cache_dir=tmp_path, download=False)
    ref_x, ref_y, ref_info = data.load_split("fashion_mnist", "test", root=fmnist_dir)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)  # exact: the same idx bytes
    assert info["classes"] == ref_info["classes"] and (info["in_channels"], info["image_size"]) == (1, 28)
    # mean/std measured on the train split (FMNIST_MEAN/STD are its 4-digit roundings)
    assert info["mean"][0] == pytest.approx(0.2860, abs=1e-4) and info["std"][0] == pytest.approx(0.3530, abs=1e-4)
    assert (tmp_path / f"{name}-train.pt").exists() and (tmp_path / f"{name}-test.pt").exists()
    shutil.rmtree(tv_fmnist_root / "FashionMNIST")  # now only the cache can answer
    x2, _, _ = data.load_split(name, "test", root=tv_fmnist_root, cache_dir=tmp_path, download=False)
    assert torch.equal(x2, x)  # exact: the cached tensor


def test_torchvision_dataset_offline_and_bad_names(tmp_path):
    with pytest.raises(CloserlookError, match=r"torchvision:MNIST \(train\) not available under .*data.download: true"):
        data.load_split("torchvision:MNIST", "train", root=tmp_path, download=False)
    for bad, text in (("torchvision:NoSuchSet", "has no class 'NoSuchSet'"),
                      ("torchvision:FakeData", "does not follow the (root, train")):
        with pytest.raises(ConfigError, match=r"^data\.name: ") as ei:
            data.check_name(bad)
        assert text in str(ei.value)


# ----------------------------------------------------------------------------- shipped configs

def test_heuristics_config_plans_both_studies():
    from closerlook import config as C

    cfg = C.load_config(REPO / "config" / "heuristics.yaml")
    assert C.figure_names(cfg) == ["fig2_sgdr", "fig4_warmup"]
    assert C.run_spec(cfg, "sgdr_plain", 0)["model"]["skip"] is False
    assert C.run_spec(cfg, "sgdr_skip", 0)["model"].get("skip", True) is True
    lb = {r: (C.run_spec(cfg, r, 0)["model"]["batch_norm"], C.run_spec(cfg, r, 0)["warmup"].get("iterations", 0))
          for r in ("lb_plain_nowarmup", "lb_plain_warmup", "lb_bn_nowarmup", "lb_bn_warmup")}
    assert lb == {"lb_plain_nowarmup": (False, 0), "lb_plain_warmup": (False, 20),
                  "lb_bn_nowarmup": (True, 0), "lb_bn_warmup": (True, 20)}


def test_docs_study_your_own_model_config_is_valid():
    import yaml

    from closerlook import config as C

    text = (REPO / "docs" / "configs.md").read_text()
    start = text.index("```yaml", text.index("# Study your own model")) + len("```yaml")
    cfg = yaml.safe_load(text[start:text.index("```", start)])
    C.validate_config(cfg)  # builds both factories on the meta device against Fashion-MNIST's shape
    assert C.model_factories(cfg) == ["torchvision.models:mobilenet_v3_small", "torchvision:resnet18"]
