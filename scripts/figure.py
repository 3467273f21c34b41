"""Rule figure: draw one of the paper's figures from the tables it needs."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"figure {smk.wildcards.figure}", torch=False):
    stages.figure(smk.wildcards.figure, smk.params.layout, smk.params.options, list(smk.output))
