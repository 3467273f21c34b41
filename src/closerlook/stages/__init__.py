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

Importing this package loads no stage: each is loaded on first use (PEP 562 ``__getattr__``), so a job
imports only its own rule file's module and what that needs: a figure or claims job never loads torch
(~2.5 CPU-s of each job's start-up here). A stage imports its own library module (train, activations,
similarity, sharpness, lenses, align, autoneb, ensembles, figures, claims) inside its function, for the
same reason (no matplotlib in a training job, no scikit-learn in a curve fit). No import here dodges a
cycle (tests/test_imports.py).
"""
import importlib
import sys
import types

# rule file (workflow/rules/<name>.smk) -> the stages it runs, all in stages/<name>.py
_STAGES = {
    "_common": ("Log",),
    "data": ("prepare_data", "data_info"),
    "train": ("check_models", "train"),
    "curves": ("fit_curve", "evaluate_path", "evaluate_paths", "plane"),
    "lenses": ("lens_slices", "lens_trajectory", "lens_pca_grid"),
    "sharpness": ("sharpness_path", "sharpness_checkpoint"),
    "activations": ("extract_activations",),
    "similarity": ("similarity", "similarity_controls"),
    "figures": ("figure",),
    "report": ("claims",),
    "align": ("align_end", "evaluate_aligned"),
    "autoneb": ("autoneb",),
    "ensembles": ("fge", "swa", "ensembles"),
    "distill": ("fidelity",),
}
_MODULE_OF = {name: mod for mod, names in _STAGES.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Python binds a submodule onto its package when it is first imported; four stages share their
    module's name (train, similarity, autoneb, ensembles), so ``stages.train`` would turn from the
    function into the module depending on import order. This binds the stage function instead."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in _MODULE_OF:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
