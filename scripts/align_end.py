"""Rule align_end: the curve's end checkpoint permuted to match its start (weight matching)."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"align {smk.wildcards.curve} {smk.wildcards.inst}"):
    stages.align_end(smk.input.start, smk.input.end, smk.output[0], smk.params.settings)
