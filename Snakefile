# closerlook: Gotmare et al. (ICLR 2019) as one DAG.
#   data prep -> train runs (seeds, variants) -> fit curves between checkpoints
#   -> activations -> similarity -> figures + claims report; the older lenses
#   (filter-normalised slices, trajectory PCA/t-SNE, sharpness) beside them.
# Default config: the paper-scale study. CPU demo: --configfile config/demo.yaml.
import gc

from snakemake.utils import min_version

# Planning cost (issue 26.1, bench/plan_bench.py): what is imported so far (Snakemake, pandas, ...)
# lives as long as this process, so it is moved out of the collector's sight: full collections scan
# only what planning creates (0.35 of 1.8 CPU-s of `snakemake -n` on the paper DAG, exit included).
gc.freeze()

min_version("9.0")


# The paper config is the default; `--configfile X` replaces it (no merging).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/curves.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/autoneb.smk"
include: "workflow/rules/distill.smk"


if config.get("ensembles"):

    include: "workflow/rules/ensembles.smk"


include: "workflow/rules/lenses.smk"
include: "workflow/rules/sharpness.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/similarity.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
