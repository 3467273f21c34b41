"""The results layout: one function per artefact, the only place a results path is spelled out.

``closerlook.config`` (the inputs of figures and claims) and the rules (``workflow/rules/*.smk``:
outputs, inputs, logs, work directories) both build their paths here. ``R`` is the
results root of one config (:func:`results_dir`); every other argument is a name, and a
Snakemake wildcard such as ``"{seed}"`` passes through unchanged, so a rule's output
pattern and the path a figure reads come from the same function::

    results/<name>/runs/<run>/seed<S>/{epoch<E>,iter<I>,final}.pt, metrics.csv, status.json
    results/<name>/curves/<curve>/<inst>/{curve.pt, metrics.csv, curve.csv, line.csv}
          + aligned_end.pt, aligned.csv, repaired.csv (align: weights), autoneb.{pt,csv}, autoneb_metrics.csv
    results/<name>/ensembles/<inst>/{ensembles.csv, members.csv, fge/member<K>.pt, swa/swa.pt}
    results/<name>/planes/<plane>/<inst>/{grid.csv, points.csv}
    results/<name>/activations/<run>/seed<S>/<tag>/
    results/<name>/similarity/<comparison>/<inst>.csv
    results/<name>/similarity/{controls.csv, controls.md, identification.csv, change_detection.csv} (positive controls)
    results/<name>/lenses/<plane>/<inst>/{slice1d_<end>,slice2d_<end>,pca,trajectory,views,pca_grid}.csv, components.pt
    results/<name>/sharpness/paths/<curve>/<inst>/<path>.csv, sharpness/checkpoints/<run>/seed<S>/<tag>.csv
    results/<name>/figures/<figure>.<ext>, claims.{json,md}, data/info.json, checks/models.json
    results/<name>/logs/<stage>/...log, work/{runs,curves}/... (resume state)
    <cache_dir>/<data set>-{train,test}.pt   (decoded data, shared by configs)
"""
from __future__ import annotations

PAPER_FIGURES = ("fig1_robustness", "fig2_sgdr", "fig3_plane", "fig4_warmup", "fig5_freeze", "fig6_distill")
LENS_FIGURES = ("fig7_lenses", "fig8_sharpness")  # the older lenses beside the paper's (closerlook.figures_lenses)
EXTRA_FIGURES = ("fig9_ensembles",)  # beyond the paper: the ensemble comparison (closerlook.figures_ensembles)
EXTRA_FIGURES += ("fig10_warmup_sharpness",)  # beyond the paper: lambda_max inside training (closerlook.figures_sharpness_trace)
FIGURES = PAPER_FIGURES + LENS_FIGURES + EXTRA_FIGURES
FIGURE_FORMATS = ("pdf", "png")
CURVE_FILES = ("curve.pt", "metrics.csv")
PLANE_FILES = ("grid.csv", "points.csv")
LENS_ENDS = ("w1", "w2")  # the lens slices are taken around both endpoints of the plane's curve
LENS_SLICE_KINDS = ("slice1d", "slice2d")
LENS_TRAJECTORY_FILES = ("pca.csv", "trajectory.csv", "views.csv", "components.pt")
RUN_TABLES = ("metrics.csv", "status.json")
SPLITS = ("train", "test")
DATA_CACHE_DIR = "resources/data"  # decoded data sets, shared by every config


def results_dir(name: str) -> str:
    return f"results/{name}"


def run_dir(R: str, run: str, seed) -> str:
    return f"{R}/runs/{run}/seed{seed}"


def checkpoint(R: str, run: str, seed, tag: str) -> str:
    """``tag``: ``epoch<E>``, ``iter<I>`` or ``final``."""
    return f"{run_dir(R, run, seed)}/{tag}.pt"


def run_metrics(R: str, run: str, seed) -> str:
    return f"{run_dir(R, run, seed)}/metrics.csv"


def run_work(R: str, run: str, seed) -> str:
    """Resume state of a training job: outside its declared outputs, so a killed job's retry resumes."""
    return f"{R}/work/runs/{run}/seed{seed}"


def curve_dir(R: str, curve: str, inst: str) -> str:
    return f"{R}/curves/{curve}/{inst}"


def curve_file(R: str, curve: str, inst: str, name: str) -> str:
    """``name``: ``curve.pt``, ``metrics.csv`` (fitting), or ``<path>.csv`` with path ``curve`` / ``line``."""
    return f"{curve_dir(R, curve, inst)}/{name}"


# the paths between a curve's two checkpoints, each a table of loss/accuracy along t: the fitted curve, the
# straight line, the line to the permutation-aligned end (+ REPAIRed), the AutoNEB chain
PATH_KINDS = ("curve", "line", "aligned", "repaired", "autoneb")


def path_table(R: str, curve: str, inst: str, path: str) -> str:
    """Loss/accuracy along t of the fitted curve (``path="curve"``), the straight line (``"line"``), the line to
    the aligned end (``"aligned"``, ``"repaired"``) or the AutoNEB chain (``"autoneb"``)."""
    return curve_file(R, curve, inst, f"{path}.csv")


def aligned_end(R: str, curve: str, inst: str) -> str:
    """The curve's end checkpoint permuted to match its start (``align: weights``)."""
    return curve_file(R, curve, inst, "aligned_end.pt")


def autoneb_file(R: str, curve: str, inst: str, name: str) -> str:
    """``name``: ``autoneb.pt`` (the pivots) or ``autoneb_metrics.csv`` (one row per cycle)."""
    return curve_file(R, curve, inst, name)


def ensemble_dir(R: str, inst: str) -> str:
    return f"{R}/ensembles/{inst}"


def ensemble_table(R: str, inst: str, name: str) -> str:
    """``name``: ``ensembles`` (one row per method) or ``members`` (one row per member)."""
    return f"{ensemble_dir(R, inst)}/{name}.csv"


def fge_member(R: str, inst: str, k) -> str:
    return f"{ensemble_dir(R, inst)}/fge/member{k}.pt"


def swa_weights(R: str, inst: str) -> str:
    return f"{ensemble_dir(R, inst)}/swa/swa.pt"


def curve_work(R: str, curve: str, inst: str) -> str:
    return f"{R}/work/curves/{curve}/{inst}"


def plane_file(R: str, plane: str, inst: str, name: str) -> str:
    """``name``: ``grid.csv`` or ``points.csv``."""
    return f"{R}/planes/{plane}/{inst}/{name}"


def lens_file(R: str, plane: str, inst: str, name: str) -> str:
    """``name``: ``<slice1d|slice2d>_<w1|w2>.csv``, ``pca.csv``, ``trajectory.csv``, ``views.csv``,
    ``components.pt`` (the top-2 PCA axes) or ``pca_grid.csv``."""
    return f"{R}/lenses/{plane}/{inst}/{name}"


def lens_slice(R: str, plane: str, inst: str, kind: str, end: str) -> str:
    """The filter-normalised slice ``kind`` (``slice1d`` | ``slice2d``) around endpoint ``end`` (``w1`` | ``w2``)."""
    return lens_file(R, plane, inst, f"{kind}_{end}.csv")


def sharpness_path(R: str, curve: str, inst: str, path: str) -> str:
    """Sharpness at t-points along the fitted curve (``path="curve"``) or the straight line (``"line"``)."""
    return f"{R}/sharpness/paths/{curve}/{inst}/{path}.csv"


def sharpness_checkpoint(R: str, run: str, seed, tag: str) -> str:
    return f"{R}/sharpness/checkpoints/{run}/seed{seed}/{tag}.csv"


def activation_dir(R: str, run: str, seed, tag: str) -> str:
    return f"{R}/activations/{run}/seed{seed}/{tag}"


def similarity_table(R: str, comparison: str, inst: str) -> str:
    return f"{R}/similarity/{comparison}/{inst}.csv"


def controls_table(R: str) -> str:
    """The similarity measures' positive controls, one row per (control, measure) (closerlook.controls)."""
    return f"{R}/similarity/controls.csv"


def controls_markdown(R: str) -> str:
    """The controls' tables, included verbatim in claims.md."""
    return f"{R}/similarity/controls.md"


def identification_table(R: str) -> str:
    """Layer identification per measure and layer, with the cross-layer matrix (``vs_<layer>`` columns)."""
    return f"{R}/similarity/identification.csv"


def change_detection_table(R: str) -> str:
    """Change detection per measure and layer (role before / target / after)."""
    return f"{R}/similarity/change_detection.csv"


def figure_stem(R: str, figure: str) -> str:
    return f"{R}/figures/{figure}"


def figure_file(R: str, figure: str, ext: str) -> str:
    return f"{figure_stem(R, figure)}.{ext}"


def claims_file(R: str, ext: str) -> str:
    """``ext``: ``json`` or ``md``."""
    return f"{R}/claims.{ext}"


def sharpness_trajectory(R: str, run: str, seed) -> str:
    """lambda_max inside training (closerlook.sharpness_trace), written by the run itself."""
    return f"{run_dir(R, run, seed)}/sharpness_trajectory.csv"


def fidelity_table(R: str) -> str:
    """The students' fidelity to their teacher (closerlook.fidelity): one row per (student, seed, split)."""
    return f"{R}/distill/fidelity.csv"


def models_check(R: str) -> str:
    """What the ``check_models`` job checked (every run's model built on the meta device) before any training."""
    return f"{R}/checks/models.json"


def data_info(R: str) -> str:
    return f"{R}/data/info.json"


def log(R: str, stage: str, *parts: str) -> str:
    return "/".join([R, "logs", stage, *parts]) + ".log"


def data_log(cache_dir: str, name: str) -> str:
    return f"{cache_dir}/logs/prepare_{name}.log"


def data_cache(cache_dir: str, name: str, split: str) -> str:
    """The decoded uint8 tensors of one split (:func:`closerlook.data.load_split`'s cache)."""
    return f"{cache_dir}/{name}-{split}.pt"
