"""Rule fge: fast geometric ensembling members from the base checkpoint."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"fge {smk.wildcards.inst}") as ctx:
    stages.fge(smk.input.base, list(smk.output), smk.params.training, smk.params.data, device=ctx["device"])
