import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from closerlook import data
from closerlook.data import (DeviceLoader, dataset_info, eval_batches, load_split, probe_fingerprint,
                             probe_set, stratified_subset)
from closerlook.io import CloserlookError, ConfigError

CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"  # ../shared beside the checkout


# ----------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def fmnist(fmnist_dir, data_cache):
    return load_split("fashion_mnist", "train", root=fmnist_dir, cache_dir=data_cache)


def test_fashion_mnist_shapes_and_cache(fmnist, fmnist_dir, data_cache):
    x, y, info = fmnist
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert int(y.min()) == 0 and int(y.max()) == 9
    assert torch.bincount(y).tolist() == [6000] * 10
    assert info["num_classes"] == 10 and info["in_channels"] == 1 and info["image_size"] == 28
    assert info["mean"] == pytest.approx([0.2860]) and info["std"] == pytest.approx([0.3530])
    cache = data_cache / "fashion_mnist-train.pt"
    assert cache.exists()
    stamp = cache.stat().st_mtime_ns
    x2, y2, info2 = load_split("fashion_mnist", "train", root=fmnist_dir, cache_dir=data_cache)
    assert cache.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert torch.equal(x, x2) and torch.equal(y, y2) and info2 == info
    xt, yt, _ = load_split("fashion_mnist", "test", root=fmnist_dir, cache_dir=data_cache)
    assert xt.shape == (10000, 1, 28, 28) and yt.shape == (10000,)
    # the pixel statistics match the published normalisation constants
    assert x.float().div(255).mean().item() == pytest.approx(0.2860, abs=1e-3)
    assert dataset_info("fashion_mnist") == info


def test_fashion_mnist_order_and_cache_are_untouched_by_the_folder_order(fmnist, fmnist_dir, data_cache):
    # Fashion-MNIST is stored in its files' own (class-mixed) order: the images are the idx file's
    # bytes as they lie, read here without closerlook's reader
    x, y, _ = fmnist
    with gzip.open(fmnist_dir / "train-images-idx3-ubyte.gz", "rb") as fh:
        raw = np.frombuffer(fh.read(), dtype=np.uint8, offset=16)
    assert np.array_equal(x.numpy().reshape(-1), raw)
    # golden: the probe fingerprint of the first 1,000 images as main computed it before the folder
    # order existed (commit 42b48a0, same Debian files): the probe sets of earlier results still match
    assert probe_fingerprint(probe_set(x, 1000)) == "ce9fde1d2304c384"
    # the cache holds exactly the keys of the format written before "order": old caches stay valid
    cached = torch.load(data_cache / "fashion_mnist-train.pt", weights_only=True)
    assert set(cached) == {"format", "source", "images", "labels", "info"}
    assert data.stored_order("fashion_mnist") == data.SOURCE_ORDER == data.stored_order("torchvision:MNIST")
    assert data.stored_order("cifar10") == data.SOURCE_ORDER


def test_cifar10_torchvision_keeps_the_file_order(tmp_path, monkeypatch):
    # torchvision's CIFAR-10 batches are read in file order (no re-ordering): a fake
    # cifar-10-batches-py with a known label sequence (md5 checks bypassed: the files are fakes)
    import pickle

    import torchvision.datasets.cifar as tv_cifar

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name, _ in tv_cifar.CIFAR10.train_list + tv_cifar.CIFAR10.test_list:
        batches[name] = {"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), "labels": [0, 0, 0, 9, 9, 9]}
        (d / name).write_bytes(pickle.dumps(batches[name]))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": data.CIFAR10_CLASSES}))
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    x, y, _ = load_split("cifar10", "train", root=tmp_path, cache_dir=tmp_path / "cache", download=False)
    expect = np.concatenate([batches[n]["data"] for n, _ in tv_cifar.CIFAR10.train_list])
    assert y.tolist() == [0, 0, 0, 9, 9, 9] * 5  # class-sorted within a batch, kept as the files have it
    assert np.array_equal(x.numpy().reshape(30, 3072), expect)
    assert "order" not in torch.load(tmp_path / "cache" / "cifar10-train.pt", weights_only=True)


def test_fashion_mnist_default_root_is_debian_package(fmnist, fmnist_dir):
    if fmnist_dir != data.DEFAULT_FMNIST_ROOT:
        pytest.skip("FMNIST_DIR overridden")
    x, y, _ = load_split("fashion_mnist", "test")
    assert x.shape == (10000, 1, 28, 28)


def test_fashion_mnist_missing_names_path_and_package(tmp_path):
    with pytest.raises(CloserlookError) as err:
        load_split("fashion_mnist", "train", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg


def test_cifar10_missing_without_download(tmp_path):
    with pytest.raises(CloserlookError) as err:
        load_split("cifar10", "train", root=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path) in msg and "cifar10_jpeg" in msg


def test_unknown_name_and_split():
    with pytest.raises(ConfigError, match="mnist_digits.*cifar10.*fashion_mnist"):
        load_split("mnist_digits", "train")
    with pytest.raises(ConfigError, match="mnist_digits"):
        dataset_info("mnist_digits")
    with pytest.raises(ConfigError, match="valid"):
        load_split("fashion_mnist", "valid")


@pytest.fixture(scope="module")
def cifar_jpeg(data_cache):
    if not CIFAR_ZIP.exists():
        pytest.skip(f"{CIFAR_ZIP} not present")
    return load_split("cifar10_jpeg", "train", cache_dir=data_cache)


def test_cifar10_jpeg_zip(cifar_jpeg, data_cache):
    x, y, info = cifar_jpeg
    assert x.shape == (50000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [5000] * 10
    assert info["classes"] == data.CIFAR10_CLASSES
    assert info["mean"] == pytest.approx(list(data.CIFAR10_MEAN))
    mean = x.numpy().sum(axis=(0, 2, 3), dtype=np.int64) / (50000 * 32 * 32 * 255)
    assert mean.tolist() == pytest.approx([0.4913, 0.4821, 0.4465], abs=2e-4)
    assert (data_cache / "cifar10_jpeg-train.pt").exists()
    assert dataset_info("cifar10_jpeg") == info


def test_cifar10_jpeg_first_images_are_class_mixed(cifar_jpeg, data_cache):
    # the zip lists its files class by class; the stored order is FOLDER_ORDER's permutation, so
    # "the first N images" (probe set, eval_train_images) is a class-mixed sample
    x, y, _ = cifar_jpeg
    counts = torch.bincount(y[:1000], minlength=10)
    # 1,000 draws without replacement from 10 x 5,000: each count is ~100 +- 9.5 (hypergeometric sd);
    # 60..140 is more than 4 sd either side, yet would fail for any order with a class under-represented
    assert counts.min() >= 60 and counts.max() <= 140, counts.tolist()
    assert torch.bincount(y[:100], minlength=10).min() >= 1  # even the first 100 hold every class
    # golden: the first labels of the stored order (torch CPU randperm, seed FOLDER_ORDER_SEED): pins
    # the order across machines and torch versions (a change here changes every folder cache)
    assert y[:20].tolist() == [5, 0, 4, 6, 0, 5, 5, 4, 8, 3, 0, 1, 0, 3, 1, 0, 6, 9, 6, 7]
    # a stratified subset keeps the stored order: its first images are class-mixed too
    idx = stratified_subset(y, 250, seed=0)
    assert torch.bincount(y[idx][:1000], minlength=10).min() >= 60
    cached = torch.load(data_cache / "cifar10_jpeg-train.pt", weights_only=True)
    assert cached["order"] == data.FOLDER_ORDER


def test_cifar10_jpeg_order_is_the_same_on_every_decode():
    if not CIFAR_ZIP.exists():
        pytest.skip(f"{CIFAR_ZIP} not present")
    # the test split (10,000 images, ~2 s a decode), twice without a cache: bitwise the same
    x1, y1, _ = load_split("cifar10_jpeg", "test")
    x2, y2, _ = load_split("cifar10_jpeg", "test")
    assert torch.equal(y1, y2) and torch.equal(x1, x2)
    assert torch.bincount(y1[:1000], minlength=10).min() >= 60  # as for train: ~100 +- 9.5 each


# ----------------------------------------------------------------------------- imagefolder (small, synthetic)

def _make_tree(base, classes=("b_cls", "a_cls"), per=3, size=8, gray=False):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "test"):
        for c in classes:
            d = base / split / c
            d.mkdir(parents=True)
            for i in range(per):
                arr = rng.integers(0, 256, (size, size) if gray else (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:04d}.png")
                arrays[(split, c, i)] = arr
    return arrays


@pytest.mark.parametrize("as_zip", [False, True])
def test_imagefolder_dir_and_zip(tmp_path, as_zip):
    tree = tmp_path / "tree"
    arrays = _make_tree(tree)
    root = tree
    if as_zip:
        root = tmp_path / "tree.zip"
        with zipfile.ZipFile(root, "w") as zf:
            for p in sorted(tree.rglob("*.png")):
                zf.write(p, p.relative_to(tree).as_posix())
    cache = tmp_path / "cache"
    x, y, info = load_split("imagefolder", "train", root=root, cache_dir=cache)
    assert info["classes"] == ["a_cls", "b_cls"]  # sorted like torchvision
    assert x.shape == (6, 3, 8, 8)
    # stored order: the files sorted by (class, name), permuted by FOLDER_ORDER's randperm
    files = [(c, i) for c in info["classes"] for i in range(3)]
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(data.FOLDER_ORDER_SEED)).tolist()
    assert perm != sorted(perm)  # the check below would not see a missing permutation otherwise
    for k, j in enumerate(perm):
        c, i = files[j]
        assert y[k] == info["classes"].index(c)
        assert np.array_equal(x[k].permute(1, 2, 0).numpy(), arrays[("train", c, i)])
    expect_mean = x.double().div(255).mean(dim=(0, 2, 3))
    expect_std = x.double().div(255).std(dim=(0, 2, 3), unbiased=False)
    assert info["mean"] == pytest.approx(expect_mean.tolist()) and info["std"] == pytest.approx(expect_std.tolist())
    xt, yt, info_t = load_split("imagefolder", "test", root=root, cache_dir=cache)
    assert xt.shape == (6, 3, 8, 8) and info_t["mean"] == info["mean"]  # train statistics
    assert (cache / "imagefolder-train.pt").exists() and (cache / "imagefolder-test.pt").exists()
    assert dataset_info("imagefolder", root=root, cache_dir=cache) == info


def test_imagefolder_first_images_are_class_mixed_and_the_order_is_fixed(tmp_path):
    # 10 classes x 20 tiny images: a class-sorted order would put one class in the first 20
    classes = [f"c{k}" for k in range(10)]
    _make_tree(tmp_path / "tree", classes=classes, per=20, size=4)
    root = tmp_path / "tree.zip"
    with zipfile.ZipFile(root, "w") as zf:
        for p in sorted((tmp_path / "tree").rglob("*.png"), reverse=True):  # member order must not matter
            zf.write(p, p.relative_to(tmp_path / "tree").as_posix())
    x, y, _ = load_split("imagefolder", "train", root=tmp_path / "tree")
    assert len(y[:20].unique()) >= 5  # deterministic (fixed seed); sorted storage would give 1
    x2, y2, _ = load_split("imagefolder", "train", root=tmp_path / "tree")
    xz, yz, _ = load_split("imagefolder", "train", root=root)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # every decode: the same order
    assert torch.equal(x, xz) and torch.equal(y, yz)  # directory and zip alike


def test_class_sorted_cache_of_an_older_closerlook_is_re_decoded(tmp_path):
    _make_tree(tmp_path / "tree", classes=[f"c{k}" for k in range(4)], per=4, size=4)
    cache = tmp_path / "cache"
    x, y, info = load_split("imagefolder", "train", root=tmp_path / "tree", cache_dir=cache)
    f = cache / "imagefolder-train.pt"
    entry = torch.load(f, weights_only=True)
    assert entry["order"] == data.FOLDER_ORDER
    # what closerlook wrote before the folder order: no "order" key, images sorted by class
    srt = torch.sort(y, stable=True).indices
    old = {k: v for k, v in entry.items() if k != "order"} | {"images": x[srt], "labels": y[srt]}
    torch.save(old, f)
    with pytest.warns(UserWarning, match="class-sorted folder order of an older closerlook.*re-decoding"):
        x2, y2, _ = load_split("imagefolder", "train", root=tmp_path / "tree", cache_dir=cache)
    assert torch.equal(x2, x) and torch.equal(y2, y)
    assert torch.load(f, weights_only=True)["order"] == data.FOLDER_ORDER  # rewritten in the new order
    torch.save(old | {"order": "class-mixed/randperm-seed1"}, f)  # another order tag: re-decoded too
    with pytest.warns(UserWarning, match="randperm-seed1"):
        assert torch.equal(load_split("imagefolder", "train", root=tmp_path / "tree", cache_dir=cache)[1], y)


def test_imagefolder_grey_converted_to_rgb(tmp_path):
    _make_tree(tmp_path, gray=True, per=1)
    x, _, info = load_split("imagefolder", "train", root=tmp_path)
    assert x.shape == (2, 3, 8, 8) and info["in_channels"] == 3
    assert torch.equal(x[:, 0], x[:, 1])


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ConfigError, match="root"):
        load_split("imagefolder", "train")
    with pytest.raises(CloserlookError, match="nowhere"):
        load_split("imagefolder", "train", root=tmp_path / "nowhere")
    with pytest.raises(CloserlookError, match="train"):
        load_split("imagefolder", "train", root=tmp_path)


def test_cache_from_other_source_is_rebuilt(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _make_tree(a, per=1)
    _make_tree(b, per=2)
    cache = tmp_path / "cache"
    assert len(load_split("imagefolder", "train", root=a, cache_dir=cache)[0]) == 2
    with pytest.warns(UserWarning, match="rebuilding"):
        assert len(load_split("imagefolder", "train", root=b, cache_dir=cache)[0]) == 4


# ----------------------------------------------------------------------------- subsets and probe

def test_stratified_subset():
    labels = torch.arange(10).repeat_interleave(50)[torch.randperm(500, generator=torch.Generator().manual_seed(1))]
    idx = stratified_subset(labels, 7, seed=3)
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values)
    assert len(idx.unique()) == 70
    assert torch.bincount(labels[idx]).tolist() == [7] * 10
    assert torch.equal(idx, stratified_subset(labels, 7, seed=3))
    assert not torch.equal(idx, stratified_subset(labels, 7, seed=4))
    assert torch.equal(stratified_subset(labels, None, seed=0), torch.arange(500))
    with pytest.raises(ConfigError, match="per_class"):
        stratified_subset(labels, 51, seed=0)


def test_probe_set_and_fingerprint():
    imgs = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    p = probe_set(imgs, 5)
    assert torch.equal(p, imgs[:5])
    fp = probe_fingerprint(p)
    assert isinstance(fp, str) and len(fp) == 16 and fp == probe_fingerprint(imgs[:5].clone())
    assert fp != probe_fingerprint(imgs[1:6])
    with pytest.raises(ConfigError):
        probe_set(imgs, 21)


# ----------------------------------------------------------------------------- DeviceLoader

MEAN, STD = (0.5, 0.25, 0.125), (0.5, 0.25, 0.2)


def _coded_images(n=64, h=8, w=8):
    """Every pixel of every image has a distinct nonzero code (image, channel, row, col) -> value."""
    x = torch.zeros(n, 3, h, w, dtype=torch.uint8)
    x[:] = 1 + (torch.arange(h).view(h, 1) * w + torch.arange(w).view(1, w))  # 1..64, unique per (row, col)
    return x


def _unnormalise(x):
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return (x * s + m) * 255


def test_loader_shapes_len_and_normalisation():
    imgs = torch.randint(0, 256, (103, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(103) % 10
    ld = DeviceLoader(imgs, labels, 10, mean=MEAN, std=STD, augment=False, shuffle=False, seed=0)
    assert len(ld) == 11 and ld.num_samples == 103
    batches = list(ld.batches(0))
    assert [len(b[1]) for b in batches] == [10] * 10 + [3]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (10, 3, 8, 8)
    expect = (imgs[:10].float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(x, expect, atol=1e-6)
    assert torch.equal(y, labels[:10])
    ld2 = DeviceLoader(imgs, labels, 10, mean=MEAN, std=STD, augment=False, shuffle=False, seed=0, drop_last=True)
    assert len(ld2) == 10 and len(list(ld2.batches(0))) == 10
    cl = DeviceLoader(imgs, labels, 10, mean=MEAN, std=STD, augment=False, shuffle=False, seed=0, channels_last=True)
    xc, _ = next(cl.batches(0))
    assert xc.is_contiguous(memory_format=torch.channels_last) and torch.allclose(xc, x)
    ev = eval_batches(imgs, labels, 50, MEAN, STD, "cpu")
    assert torch.equal(torch.cat([b[1] for b in ev]), labels)
    assert torch.equal(torch.cat([b[1] for b in ev]), labels)  # reusable


def test_augment_is_shifted_window_of_zero_padded_image():
    h = w = 8
    pad = 4
    imgs = _coded_images(256, h, w)
    ld = DeviceLoader(imgs, torch.zeros(256, dtype=torch.long), 64, mean=MEAN, std=STD,
                      augment=True, shuffle=True, seed=5)
    padded = torch.zeros(3, h + 2 * pad, w + 2 * pad)
    padded[:, pad:pad + h, pad:pad + w] = imgs[0].float()
    windows = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            win = padded[:, dy:dy + h, dx:dx + w]
            windows[(dy, dx, False)] = win
            windows[(dy, dx, True)] = win.flip(-1)
    zero_norm = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    seen, flips = set(), 0
    total = 0
    for x, _ in ld.batches(0):
        raw = _unnormalise(x).round()
        for k in range(len(x)):
            match = [key for key, win in windows.items() if torch.equal(raw[k], win)]
            assert match, "augmented image is not a shifted/flipped window of the padded original"
            seen.add(match[0][:2])
            flips += match[0][2]
            total += 1
            # padded pixels equal the normalised value of a black pixel, per channel
            code0 = raw[k] == 0
            for c in range(3):
                assert torch.allclose(x[k, c][code0[c]], zero_norm[c].expand(int(code0[c].sum())), atol=1e-6)
    assert len(seen) > 60  # most of the 81 offsets occur
    assert 0.4 < flips / total < 0.6


def test_loader_determinism_and_resume():
    imgs = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(200)
    kw = dict(mean=MEAN, std=STD, augment=True, shuffle=True, seed=11)
    a = DeviceLoader(imgs, labels, 32, **kw)
    b = DeviceLoader(imgs, labels, 32, **kw)
    e0a, e0b = list(a.batches(0)), list(b.batches(0))
    for (xa, ya), (xb, yb) in zip(e0a, e0b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sorted(torch.cat([y for _, y in e0a]).tolist()) == list(range(200))
    e1 = list(a.batches(1))
    assert not torch.equal(torch.cat([y for _, y in e0a]), torch.cat([y for _, y in e1]))
    tail = list(b.batches(1, start=3))
    assert len(tail) == len(e1) - 3
    for (xa, ya), (xb, yb) in zip(e1[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # __iter__ walks the epochs
    it0 = list(iter(b))
    it1 = list(iter(b))
    assert torch.equal(it0[0][0], e0a[0][0]) and torch.equal(it1[0][0], e1[0][0]) and b.epoch == 2
    other_seed = DeviceLoader(imgs, labels, 32, **{**kw, "seed": 12})
    assert not torch.equal(next(other_seed.batches(0))[1], e0a[0][1])


def test_loader_bad_inputs():
    imgs = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(CloserlookError):
        DeviceLoader(imgs.float(), torch.zeros(4), 2, mean=MEAN, std=STD, augment=False, shuffle=False, seed=0)
    with pytest.raises(ConfigError, match="mean"):
        DeviceLoader(imgs, torch.zeros(4), 2, mean=(0.5,), std=(0.5,), augment=False, shuffle=False, seed=0)
    with pytest.raises(ConfigError, match="batch_size"):
        DeviceLoader(imgs, torch.zeros(4), 0, mean=MEAN, std=STD, augment=False, shuffle=False, seed=0)
