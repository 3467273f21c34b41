"""Rule check_models: every run's model built on the meta device, before any training (planning builds none)."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage="check models"):
    stages.check_models(smk.config, smk.output[0])
