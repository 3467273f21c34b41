"""Model factories for the tests, importable as ``toy_factories:<name>`` (tests/ is on sys.path)."""
from torch import nn

CALLS: list[dict] = []


def named(in_channels, num_classes, hidden=8):
    """Names in_channels and num_classes (not image_size): build_model passes exactly those two."""
    CALLS.append({"in_channels": in_channels, "num_classes": num_classes, "hidden": hidden})
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def kwargs_only(**kwargs):
    """Takes **kwargs only: build_model passes nothing it was not given."""
    CALLS.append(dict(kwargs))
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, kwargs.get("n", 10)))


def not_a_module():
    return 42
