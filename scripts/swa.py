"""Rule swa: SWA weights from the base checkpoint (same extra budget as FGE)."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"swa {smk.wildcards.inst}") as ctx:
    stages.swa(smk.input.base, smk.output[0], smk.params.training, smk.params.data, device=ctx["device"])
