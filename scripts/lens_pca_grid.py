"""Rule lens_pca_grid: the loss surface on the trajectory's top-2 PCA plane (BN recomputed per point)."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"lens pca grid {smk.wildcards.plane} {smk.wildcards.inst}") as ctx:
    stages.lens_pca_grid(smk.input.origin, smk.input.components, smk.input.trajectory, smk.output[0],
                         smk.params.settings, smk.params.data, device=ctx["device"],
                             factories=model_factories(smk.config))
