import pytest

from testkit import tiny_config


@pytest.fixture(scope="session")
def tiny_cfg() -> dict:
    """config/tiny.yaml as the tests run it (thread knob applied; deep-copy before changing it)."""
    return tiny_config()
