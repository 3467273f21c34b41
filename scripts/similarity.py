"""Rule similarity: per-layer similarity (+ chance baseline) between two activation stores."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"similarity {smk.wildcards.comparison} {smk.wildcards.inst}", torch=False):
    stages.similarity(smk.input.a, smk.input.b, smk.output[0], smk.params.settings, labels=tuple(smk.params.labels))
