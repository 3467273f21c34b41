"""Reading config files: strict safe YAML (duplicate keys refused), ``--config`` values re-typed."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..io import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def load_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` with errors that name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        return yaml.load(text, Loader=_UniqueKeySafeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid (safe) YAML: {exc}") from exc


# libyaml's parser when PyYAML has it (the same safe constructor; ~10x faster to parse: planning reads the
# config and the schema on every `snakemake` call)
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeySafeLoader(_SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys.

    Plain ``yaml.safe_load`` keeps the last of two equal keys silently, so a
    second run with the same name would replace the first without a word.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' overrides on purpose
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r} (line {key_node.start_mark.line + 1}; first given on line {first})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def retype_cli_values(config: dict, overrides: Any) -> None:
    """Read the values given with ``snakemake --config`` as YAML, as if they came from a config file.

    Snakemake types a top-level ``--config key=value`` (int, float, bool) but reads a nested one
    (``--config 'data={train_per_class: 5}'``) with YAML's BaseLoader, which keeps every scalar a
    string: the schema would then refuse ``'5'`` for an integer. Each string that ``overrides``
    (Snakemake's ``workflow.config_settings.config``) put into ``config`` is re-read with
    ``yaml.safe_load`` in place ("5" -> 5, "null" -> None, "[1, 2]" -> a list); other values are
    left alone. A value meant as a string that reads as another type can be quoted twice.
    """
    if not isinstance(overrides, Mapping) or not isinstance(config, dict):
        return
    for key, given in overrides.items():
        if key not in config:
            continue
        if isinstance(given, Mapping):
            retype_cli_values(config[key], given)
        elif isinstance(given, (str, list)) and config[key] == given:
            config[key] = _safe_scalar(given)


def _safe_scalar(v: Any) -> Any:
    if isinstance(v, list):
        return [_safe_scalar(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _safe_scalar(x) for k, x in v.items()}
    try:
        return yaml.safe_load(v) if isinstance(v, str) else v
    except yaml.YAMLError:
        return v
