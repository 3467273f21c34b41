"""Rule figure: draw one of the paper's figures from the tables it needs."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook.figures import make_figure  # noqa: E402
from closerlook.jobs import job  # noqa: E402

smk = snakemake  # noqa: F821
with job(smk, stage=f"figure {smk.wildcards.figure}"):
    make_figure(smk.wildcards.figure, smk.params.layout, smk.params.options, list(smk.output))
