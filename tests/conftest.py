import os
from pathlib import Path

import pytest
import torch

from testkit import THREADS

# The thread count of every torch computation in the suite (CLOSERLOOK_TEST_THREADS,
# default 1: two cores are shared by the test processes). The suite must pass with 1 and 2.
torch.set_num_threads(THREADS)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FMNIST_DIR = Path(os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CIFAR_ZIP = SHARED / "data" / "cifar10-jpeg.zip"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST missing in {FMNIST_DIR}: apt-get install dataset-fashion-mnist (.ci/run does)")
    return FMNIST_DIR


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data-cache")
