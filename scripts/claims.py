"""Rule claims: evaluate the paper's claims on the measured tables."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage="claims", torch=False):
    stages.claims(smk.params.layouts, smk.params.rules, smk.output.json, smk.output.md)
