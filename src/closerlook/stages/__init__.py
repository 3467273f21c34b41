"""One function per workflow rule: plain values in, files out.

Each script in ``scripts/`` reads ``snakemake.*`` and calls one of these inside
:func:`closerlook.jobs.job`; the command lines (``python -m closerlook.train``,
``python -m closerlook.curves fit|evaluate|plane``, in :mod:`closerlook.cli`) are thin wrappers over them
as well. Settings are the typed objects :mod:`closerlook.config` resolves once
(:mod:`closerlook.settings_types`: a curve's ``CurveSettings``, a plane's, the activation and similarity
blocks); a stage also takes a partial plain mapping (``XSettings.of`` fills the defaults, the one merge)
and passes a resolved object through unchanged; data is the
``data`` block of a run spec. A stage whose input checkpoint diverged writes
its outputs marked ``diverged`` (NaN numbers) instead of failing, so nothing
downstream crashes.

One module per rule file of ``workflow/rules/`` (``stages/curves.py`` holds the rules of
``curves.smk``); ``_common`` what they share. Every stage is importable from here.

Importing this package loads every rule file's module, so a stage imports its own library module
(train, activations, similarity, sharpness, lenses, align, autoneb, ensembles, figures, claims)
inside its function: a job loads only what its rule needs (no matplotlib in a training job, no
scikit-learn in a curve fit). No import here dodges a cycle (tests/test_imports.py).
"""
from ._common import Log
from .data import prepare_data, data_info
from .train import check_models, train
from .curves import fit_curve, evaluate_path, evaluate_paths, plane
from .lenses import lens_slices, lens_trajectory, lens_pca_grid
from .sharpness import sharpness_path, sharpness_checkpoint
from .activations import extract_activations
from .similarity import similarity, similarity_controls
from .figures import figure
from .report import claims
from .align import align_end, evaluate_aligned
from .autoneb import autoneb
from .ensembles import fge, swa, ensembles
from .distill import fidelity

__all__ = ["Log", "prepare_data", "data_info", "check_models", "train", "fit_curve", "evaluate_path", "evaluate_paths", "plane", "lens_slices", "lens_trajectory", "lens_pca_grid", "sharpness_path", "sharpness_checkpoint", "extract_activations", "similarity", "similarity_controls", "figure", "claims", "align_end", "evaluate_aligned", "autoneb", "fge", "swa", "ensembles", "fidelity"]
