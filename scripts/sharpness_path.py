"""Rule sharpness_path: Hessian extremes and trace at t-points along a fitted curve or the straight line."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"sharpness {smk.wildcards.path} {smk.wildcards.curve} {smk.wildcards.inst}") as ctx:
    stages.sharpness_path(smk.input.start, smk.input.end, smk.output[0], smk.params.settings, smk.params.data,
                          curve=smk.input.get("curve"), device=ctx["device"], factories=model_factories(smk.config))
