"""Rule lens_slices: filter-normalised 1-D and 2-D slices around one endpoint (BN recomputed per point)."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"lens slices {smk.wildcards.plane} {smk.wildcards.inst} {smk.wildcards.end}") as ctx:
    stages.lens_slices(smk.input.ckpt, smk.output.slice1d, smk.output.slice2d, smk.params.settings, smk.params.data,
                       device=ctx["device"], factories=model_factories(smk.config))
