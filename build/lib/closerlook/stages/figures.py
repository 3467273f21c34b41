"""Rule of workflow/rules/figures.smk: draw one figure."""
from __future__ import annotations

from typing import Mapping, Sequence




def figure(name: str, layout: Mapping, options: Mapping, outputs: Sequence[str]) -> None:
    from ..figures import make_figure

    make_figure(name, layout, options, list(outputs))
