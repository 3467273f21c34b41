"""The figures' registry and entry point: every figure by name, built by its family's module.

Figs. 1-2 (paths): :mod:`closerlook.figures_paths`; Fig. 3 (plane): :mod:`closerlook.figures_plane`;
Figs. 4-6 (similarity): :mod:`closerlook.figures_similarity`; fig7_lenses and fig8_sharpness:
:mod:`closerlook.figures_lenses`; fig9_ensembles: :mod:`closerlook.figures_ensembles`; fig6's fidelity
panel: :mod:`closerlook.figures_fidelity`; fig10_warmup_sharpness: :mod:`closerlook.figures_sharpness_trace`. What they
all draw with (marks, notes, legends, palette, style): :mod:`closerlook.figures_common`. A new
figure goes in a new ``figures_<topic>.py`` and is registered here with one line in ``BUILDERS``.

Entry point: :func:`make_figure` ``(name, layout, options, outputs)``; the figure itself
is built by :func:`build_figure` (returns a :class:`matplotlib.figure.Figure`, used by
the tests to inspect texts and legends). Only the tidy CSV tables of ``docs/DESIGN.md``
are read (curve/line, metrics, similarity, grid/points), never checkpoints.

``layout`` per figure (all leaves are file paths, str or Path):

- ``fig1_robustness``: ``{"curves": {label: {inst: {"curve": csv, "line": csv}}}}``
- ``fig2_sgdr``: ``{"metrics": {"SGDR": {inst: csv}, "SGD": {inst: csv}},
  "specs": {"SGDR": run_spec, "SGD": run_spec}, "sgdr_pairs": {label: {inst: {"curve", "line"}}},
  "sgd_pairs": {...}, "reference_pairs": {...}}``
- ``fig3_plane``: ``{"grid": csv, "points": csv}``
- ``fig4_warmup`` / ``fig5_freeze``: ``{"metrics": {label: {inst: csv}}, "specs": {label: spec},
  "similarity": {label: {inst: csv}}}``
- ``fig6_distill``: ``{"similarity": {label: {inst: csv}}, "metrics": {label: {inst: csv}}}``

Robustness: a table whose ``status`` says ``diverged`` (NaN numbers), a missing file or a
missing measure never raises; what is finite is drawn and the run is marked
"(diverged)" / "(missing)" in the legend and in a note on the panel.
Every output is written through :func:`closerlook.io.atomic_path`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

from matplotlib.figure import Figure

from .figures_common import (  # noqa: F401  (re-exported: the figures' public helpers, by their old names)
    DEFAULT_DPI, UNTRAINED, _style, iters_per_epoch, lr_series, untrained_marks,
)
from .figures_lenses import fig7_lenses, fig8_sharpness
from .figures_paths import fig1_robustness, fig2_sgdr
from .figures_plane import bezier, draw_plane_overlay, fig3_plane, log_contour, plane_overlay_points  # noqa: F401
from .figures_fidelity import with_fidelity_panel
from .figures_sharpness_trace import fig10_warmup_sharpness
from .figures_similarity import fig4_warmup, fig5_freeze, fig6_distill
from .io import atomic_path
from .paths import FIGURE_FORMATS, FIGURES


def _fig9(layout: Mapping, options: Mapping) -> Figure:
    # imported on use: figures_ensembles takes its method names from closerlook.ensembles, which
    # imports torch; the other figures (and their jobs) stay torch-free
    from .figures_ensembles import fig9_ensembles

    return fig9_ensembles(layout, options)


BUILDERS: dict[str, Callable[[Mapping, Mapping], Figure]] = {
    "fig1_robustness": fig1_robustness,
    "fig2_sgdr": fig2_sgdr,
    "fig3_plane": fig3_plane,
    "fig4_warmup": fig4_warmup,
    "fig5_freeze": fig5_freeze,
    "fig6_distill": with_fidelity_panel(fig6_distill),  # + the fidelity panel (closerlook.figures_fidelity)
    "fig7_lenses": fig7_lenses,
    "fig8_sharpness": fig8_sharpness,
    "fig9_ensembles": _fig9,
    "fig10_warmup_sharpness": fig10_warmup_sharpness,
}


def build_figure(name: str, layout: Mapping, options: Mapping | None = None) -> Figure:
    """Build (not save) figure ``name``; raises ValueError for an unknown name."""
    if name not in BUILDERS:
        raise ValueError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}")
    _style()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return BUILDERS[name](layout or {}, dict(options or {}))


def save_figure(fig: Figure, outputs: Sequence[str | Path], dpi: float = DEFAULT_DPI) -> list[Path]:
    """Save ``fig`` to every path in ``outputs`` (format from the suffix), atomically."""
    written = []
    for out in outputs:
        out = Path(out)
        fmt = out.suffix.lstrip(".").lower() or "png"
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
        written.append(out)
    return written


def make_figure(name: str, layout: Mapping, options: Mapping | None, outputs: Sequence[str | Path]) -> Figure:
    """Build figure ``name`` from ``layout`` and write it to ``outputs``.

    ``options`` = ``config["figures"][name]`` merged with ``{format, dpi}``. When ``outputs``
    is a single stem without suffix, one file per ``options["format"]`` is written.
    Returns the Figure (for inspection).
    """
    options = dict(options or {})
    dpi = float(options.get("dpi", DEFAULT_DPI))
    outs = [Path(o) for o in ([outputs] if isinstance(outputs, (str, Path)) else outputs)]
    expanded = []
    for o in outs:
        if o.suffix:
            expanded.append(o)
        else:
            expanded.extend(o.with_suffix("." + f) for f in options.get("format", FIGURE_FORMATS))
    fig = build_figure(name, layout, options)
    save_figure(fig, expanded, dpi=dpi)
    return fig
