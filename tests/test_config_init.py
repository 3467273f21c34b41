"""Every run of the paper configs starts from a sane initialisation.

For each run (and seed) of config/config.yaml and config/paper_bn.yaml: the model the training
engine would build (same spec, same seeding) takes one CIFAR-shaped batch and gives a finite
cross-entropy of sensible size. This is what the old poor-init variant (paper init x 3 in a
16-layer ReLU stack: logits ~3^16 larger, a cross-entropy of ~1.5e5 nats) failed by construction.

Bound: 10 x ln(10) = 23.0 nats. ln(10) = 2.30 is the loss of uniform predictions over 10
classes (what the paper init gives: its logits are ~1e-3); a loss of 23 nats means the true
class gets probability e^-23 ~ 1e-10, i.e. the softmax is saturated and the first updates are
driven by logits tens of nats wide. Measured (VGG-16, no BN, seed 0, this batch): paper init
2.30, x1.25 2.30, x1.5 3.1, x1.75 27, x2 232, x3 1.5e5 - the bound separates a poor but
trainable scale from a diverging one with an order of magnitude to spare on either side.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from closerlook import config as C
from closerlook.models import build_model
from closerlook.resume import seed_everything

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["config/config.yaml", "config/paper_bn.yaml"]
CE_BOUND = 10 * math.log(10)  # see the module docstring
CIFAR = (3, 10, 32)           # in_channels, classes, image size of CIFAR-10


def _runs():
    for path in CONFIGS:
        cfg = C.load_config(REPO / path)
        for name in C.run_names(cfg):
            for seed in C.resolve_run(cfg, name)["seeds"]:
                yield pytest.param(path, name, int(seed), id=f"{Path(path).stem}-{name}-seed{seed}")


@pytest.fixture(scope="module")
def batch():
    # normalised CIFAR images have zero mean and unit variance per channel: N(0, 1) has their scale
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)


@pytest.mark.parametrize("path,run,seed", list(_runs()))
def test_initial_loss_is_finite_and_sensible(path, run, seed, batch):
    cfg = C.load_config(REPO / path)
    assert cfg["data"]["name"] in ("cifar10", "cifar10_jpeg")
    spec = C.run_spec(cfg, run, seed)
    seed_everything(seed)                     # as train.train_run does before building the model
    model = build_model(spec["model"], *CIFAR).eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(batch[0]), batch[1]).item()
    assert math.isfinite(loss) and loss < CE_BOUND, f"{path} runs.{run} seed {seed}: initial loss {loss:.4g}"


def test_the_bound_rejects_the_old_poor_init(batch):
    """The check can fail: the old variant E (paper init x 3) and x 2 are far above the bound."""
    for scale in (2.0, 3.0):
        seed_everything(0)
        m = build_model({"name": "vgg16", "batch_norm": False, "init": "scaled", "init_scale": scale}, *CIFAR).eval()
        with torch.no_grad():
            assert F.cross_entropy(m(batch[0]), batch[1]).item() > CE_BOUND
