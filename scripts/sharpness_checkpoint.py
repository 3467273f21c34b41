"""Rule sharpness_checkpoint: Hessian extremes and trace of one checkpoint."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"sharpness {smk.wildcards.run} seed{smk.wildcards.seed} {smk.wildcards.tag}") as ctx:
    stages.sharpness_checkpoint(smk.input.ckpt, smk.params.label, smk.output[0], smk.params.settings,
                                smk.params.data, device=ctx["device"], factories=model_factories(smk.config))
