"""Every block's defaults in one torch-free module: the settings layer's table.

Planning (``snakemake -n``: the Snakefile, :mod:`closerlook.config` and what they import) must not
import torch, so the defaults that lived beside the torch code that uses them live here, each with
its comment; the old names stay importable from the old modules (``curves.FIT_DEFAULTS`` etc. are
these same objects). A value changed here is changed everywhere. Imports: the standard library and
:mod:`closerlook.io` only (a test checks that importing this module imports no torch).
"""
from __future__ import annotations

from typing import Any, Mapping


# --------------------------------------------------------------------------- run specs (closerlook.spec)
DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "data": {"name": "fashion_mnist", "root": None, "cache_dir": None, "train_per_class": None,
             "test_per_class": None, "subset_seed": 0},
    "model": {"name": "small_cnn"},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "schedule": {"name": "constant"},
    "warmup": {"iterations": 0, "start_factor": 0.0},
    "epochs": 1,
    "batch_size": 50,
    "micro_batch_size": None,
    "augment": True,
    "freeze": None,
    "distill": None,
    "checkpoints": {"epochs": [], "iterations": []},
    "eval_every": 1,
    "eval_batch_size": 1000,
    "resume_every": 50,
    "device": "auto",
    "precision": "auto",
    "channels_last": False,
    "compile": False,
    "threads": None,
    "sharpness_trace": None,  # lambda_max inside training (closerlook.sharpness_trace); None: off
}
DISTILL_DEFAULTS = {"temperature": 4.0, "alpha": 0.9}
OPTIMIZER_DEFAULTS = {"sgd": {"momentum": 0.0, "weight_decay": 0.0, "nesterov": False, "dampening": 0.0},
                      "adam": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}}


# --------------------------------------------------------------------------- names a config may choose from
# One torch-free owner for each list (the engines import them from here; the typed settings check against them).
CURVE_KINDS = ("bezier", "polychain", "line")        # a fitted curve is one of the first two; "line" has no bends
T_SAMPLINGS = ("uniform", "stratified")               # t values of one curve-fitting step
FIT_SCHEDULES = ("constant", "plateau", "garipov")    # curve fitting's lr schedules
CAPTURE_MODES = ("pool", "full", "subsample")         # how conv activations are stored
ALIGN_METHODS = ("weights", "none")
LENS_CENTERS = ("final", "mean")
SIMILARITY_MEASURES = ("cca_mean", "cca_mean98", "cca_mean_squared", "svcca", "pwcca", "linear_cka",
                       "linear_cka_debiased", "rbf_cka", "dft_cca_mean98")   # closerlook.similarity.MEASURES' names


# --------------------------------------------------------------------------- curves (closerlook.curves)
# Curve fitting: Garipov et al.'s recipe (dnn-mode-connectivity), the one owner of these defaults
# Garipov et al.'s recipe (dnn-mode-connectivity) is lr 0.015, one t ~ U(0, 1) per batch, his schedule over a
# fixed epoch count; ours, chosen by measurement at demo scale (docs/curve-fitting.md: fewer gradient evaluations
# until a two-seed curve keeps <= 10 % of the barrier, at the worst of 6 repeats): 4 stratified t per batch, each
# on a quarter of the batch (one t's cost), lr 0.05 halved at each stopping-rule check without improvement,
# fitted until the rule stops it (``epochs`` is the cap).
FIT_DEFAULTS: dict[str, Any] = {
    "kind": "bezier", "num_bends": 3, "epochs": 10, "lr": 0.05, "weight_decay": 5.0e-4, "momentum": 0.9,
    "batch_size": 128, "t_per_batch": 4, "t_sampling": "stratified", "t_split": True, "augment": False,
    "schedule": "plateau", "plateau_patience": 1,   # plateau: lr x0.5 after this many checks in a row without improvement
    "resume": True, "checkpoint_epochs": [], "resume_every": 200,
    "stop": {"min_delta": 0.01, "patience": 2},   # the stopping rule (STOP_DEFAULTS keys); None: the full ``epochs``
}
# The stopping rule: after each epoch (every ``every`` epochs) the max training loss over ``ts`` on the
# first ``images`` training images (unaugmented, BN recomputed) is measured; the fit stops once that
# max has not fallen by more than ``min_delta`` nats below its best so far for ``patience`` checks.
# ``min_delta`` has no default (it sets the tolerance): the rule is on only when given.
STOP_DEFAULTS: dict[str, Any] = {"ts": [0.25, 0.5, 0.75], "images": 500, "patience": 3, "every": 1}


# --------------------------------------------------------------------------- paths and planes (closerlook.landscape)
EVAL_BATCH_SIZE = 500  # batch of the evaluation passes (memory only: per-batch sums are accumulated)
# evaluation along a path: Garipov et al. evaluate 61 points; BN recomputed on all (or the first N) batches
PATH_DEFAULTS = {"points": 61, "eval_train_images": None, "bn_batches": None, "eval_batch_size": EVAL_BATCH_SIZE}
# the plane grid: Garipov et al.'s default, 21 x 21 points with 0.2 margins
PLANE_DEFAULTS = {"grid": [21, 21], "margin": 0.2, "eval_train_images": None, "bn_batches": None,
                  "eval_batch_size": EVAL_BATCH_SIZE}


# --------------------------------------------------------------------------- activations (closerlook.activations)
# the workflow's capture settings (config `activations:`): spatial mean of conv outputs, 16 positions
# per image when subsampling, 500 probe images per forward batch, float32 stores
CAPTURE_DEFAULTS = {"mode": "pool", "subsample": 16, "batch_size": 500, "dtype": "float32"}


# --------------------------------------------------------------------------- lenses (closerlook.lenses)
# One owner for the lens settings (config.lens_settings merges the config's `lenses:` block over these).
LENS_DEFAULTS: dict[str, Any] = {
    "seed": 0,            # direction i of a slice: seed + i
    "points": 21,         # 1-D slice: points over [-span, span]
    "grid": [11, 11],     # 2-D slice: (u, v) points over [-span, span]^2
    "span": 1.0,          # Li et al.'s range: alpha in [-1, 1] (filter-normalised units)
    "pca_grid": [11, 11],  # the loss surface on the top-2 PCA plane
    "margin": 0.2,        # PCA grid: trajectory extent + margin x extent on each side
    "center": "final",    # final (Li et al.'s origin) | mean (also subtract the centred rows' mean)
    "perplexity": 5.0,    # t-SNE; drawn only when perplexity < N / 3
    "tsne_seed": 0,
    "memory_mb": 1024,    # Gram streaming: checkpoints held at once = memory_mb / (8 P bytes) - 1
    "eval_train_images": None,
    "bn_batches": None,
    "eval_batch_size": EVAL_BATCH_SIZE,
}


# --------------------------------------------------------------------------- sharpness (closerlook.sharpness)
# One owner for the sharpness settings (config.sharpness_settings merges the config's block over these).
SHARPNESS_DEFAULTS: dict[str, Any] = {
    "images": 256,          # the fixed subset: the first N training images, unaugmented
    "batch_size": 128,      # HVP batch (memory only: the loss is the mean over all `images`)
    "lanczos_steps": 20,
    "probes": 100,          # Hutchinson probe vectors (Rademacher)
    "seed": 0,              # Lanczos start vector: seed; Hutchinson probes: seed + 1
    "points": 5,            # t values along a path
    "bn_batches": None,     # BN recompute on the first N batches of the unaugmented training loader
    "eval_train_images": None,
    "eval_batch_size": EVAL_BATCH_SIZE,
}


# --------------------------------------------------------------------------- similarity (closerlook.similarity)
# the workflow's per-layer comparisons (config `similarity:`): measures computed, shuffle-chance column
CHANCE_SHUFFLES = 20  # shuffles behind each chance level: p-values >= 1/21; K >= 99 for p < 0.01
# the workflow's per-layer comparisons (config `similarity:`): measures, the shuffle-chance level from
# `chance_shuffles` shuffles, and `subsamples` of the probe set (count B, size m; size null = half the set)
# images_per_dim: null compares every layer in full; r compares the CCA family on a layer with fewer than r
# images per neuron in its top n // r directions (closerlook.similarity_tables.reduced_dims); the model check
# warns below MIN_IMAGES_PER_DIM images per compared dimension, where chance CCA nears 1 (issue 25.3)
MIN_IMAGES_PER_DIM = 5
COMPARISON_DEFAULTS = {"measures": ["cca_mean", "cca_mean98", "svcca", "linear_cka"], "chance": True,
                       "chance_shuffles": CHANCE_SHUFFLES, "subsamples": {"count": 10, "size": None},
                       "images_per_dim": None}


# --------------------------------------------------------------------------- alignment (closerlook.align)
# the one owner of alignment defaults (config `align:`): Ainsworth et al.'s weight matching, iterated until
# no permutation group improves (at most max_iter sweeps, groups in a seeded random order); REPAIR statistics
# from the first repair_images training images (Jordan et al. use 5,000 for CIFAR-10)
ALIGN_DEFAULTS: dict[str, Any] = {"method": "weights", "max_iter": 100, "seed": 0, "repair": True,
                                  "repair_images": 1000}
CURVE_ALIGN_DEFAULT = "none"  # a curve's `align:` option: its end is used as trained unless it says `weights`


# --------------------------------------------------------------------------- AutoNEB (closerlook.autoneb)
# The one owner of AutoNEB's defaults (config `autoneb:`). Draxler et al. run 4 cycle groups of
# 1,000 steps on CIFAR with lr decay; these are scaled for a small demo: assumption.
AUTONEB_DEFAULTS: dict[str, Any] = {
    "cycles": 4, "steps": 100, "lr": 0.015, "lr_decay": 0.7, "momentum": 0.9, "spring": 1.0,
    "init_pivots": 1, "insert_points": 5, "insert_per_cycle": 1, "insert_tol": 0.0, "batch_size": 128,
    "eval_batches": 4, "weight_decay": 0.0, "seed": 0,
}
AUTONEB_KEYS = set(AUTONEB_DEFAULTS)  # checked by closerlook.settings_types.AutonebSettings


# --------------------------------------------------------------------------- ensembles (closerlook.ensembles)
# The one owner of the ensemble defaults (config `ensembles:`). FGE: Garipov et al. use lr 0.05 -> 0.0005
# for VGG-16 (a factor 100); null = the base run's lr and 1 % of it. SWA: Izmailov et al. use
# swa_lr 0.01 after lr 0.05 for VGG-16 (0.2 x); null = 0.2 x the base run's lr. Both: assumptions.
ENSEMBLE_DEFAULTS: dict[str, Any] = {
    "members": 4, "budget_epochs": 4, "fge": {"lr_max": None, "lr_min": None}, "swa": {"lr": None},
    "curve_ts": None, "cka_images": 500, "eval_batch_size": 500,
}
FGE_LR_MIN_RATIO, SWA_LR_RATIO = 0.01, 0.2


def resolve_lrs(settings: Mapping, base_lr: float) -> dict[str, float]:
    """FGE's lr_max / lr_min and SWA's lr: the configured values, else the ratios above of the base run's lr."""
    lr_max = float(settings["fge"].get("lr_max") or base_lr)
    return {"lr_max": lr_max, "lr_min": float(settings["fge"].get("lr_min") or lr_max * FGE_LR_MIN_RATIO),
            "swa_lr": float(settings["swa"].get("lr") or base_lr * SWA_LR_RATIO)}

# --------------------------------------------------------------------------- fidelity (closerlook.fidelity)
# the students' fidelity to their teacher (config `fidelity:`), measured where fig6_distill is configured
FIDELITY_DEFAULTS: dict[str, Any] = {
    "train_images": None,   # the first N training images (None: all of the training subset)
    "batch_size": 500,
    "temperature": 1.0,     # Stanton et al.'s fidelity metrics are at T = 1
}

# config block `controls:` (all optional but the endpoints). `measures: null` = the similarity block's
# measures. Thresholds are fixed here or in the config, never fitted to the activations they gate.
CONTROL_DEFAULTS = {
    "measures": None,
    "identification": None,        # {a: endpoint, b: endpoint, level: 0.95}: two seeds of one recipe
    "change_detection": None,      # {checkpoint: endpoint, layer: null (the middle one), seed: 0, ...}
    "level": 0.95,                 # identification: above chance 1/L at this one-sided binomial level
    "min_before": 0.999,           # change detection: earlier layers identical up to numerics
    "max_target": 0.5,             # change detection: the re-initialised layer must fall below this
    "seed": 0,                     # change detection: the re-initialisation's torch seed
}
