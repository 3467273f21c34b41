"""Rule evaluate_path: loss/accuracy along a fitted curve or the straight line (BN recomputed per t)."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"evaluate {smk.wildcards.path} {smk.wildcards.curve} {smk.wildcards.inst}") as ctx:
    stages.evaluate_path(smk.input.start, smk.input.end, smk.output[0], smk.params.settings, smk.params.data,
                         curve=smk.input.get("curve"), device=ctx["device"],
                         factories=model_factories(smk.config))
