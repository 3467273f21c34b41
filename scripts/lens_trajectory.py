"""Rule lens_trajectory: PCA (streamed Gram) and t-SNE of a run's checkpoints, each view's variance share."""
from pathlib import Path

from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"lens trajectory {smk.wildcards.plane} {smk.wildcards.inst}") as ctx:
    stages.lens_trajectory(list(smk.input.trajectory), smk.input.w1, smk.input.w2, smk.input.curve,
                           str(Path(smk.output[0]).parent), smk.params.settings, device=ctx["device"],
                               factories=model_factories(smk.config))
