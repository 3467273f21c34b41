import pytest
import yaml

from reliability_helpers import REPO


@pytest.fixture(scope="session")
def tiny_cfg() -> dict:
    """config/tiny.yaml as a dict (deep-copy before changing it)."""
    return yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
