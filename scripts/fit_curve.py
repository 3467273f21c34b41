"""Rule fit_curve: train the bend(s) of a curve between two checkpoints; resumes after a kill."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"fit curve {smk.wildcards.curve} {smk.wildcards.inst}") as ctx:
    stages.fit_curve(smk.input.start, smk.input.end, smk.params.workdir, smk.params.settings, smk.params.data,
                     seed=smk.params.seed, device=ctx["device"], outputs=smk.output,
                     factories=model_factories(smk.config))
