"""Rule evaluate_paths: loss/accuracy along the fitted curve and the straight line (BN recomputed per t)."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"evaluate curve + line {smk.wildcards.curve} {smk.wildcards.inst}") as ctx:
    i = smk.input
    stages.evaluate_paths(i.start, i.end, i.line_end, i.curve, dict(smk.output.items()), smk.params.settings,
                          smk.params.data, device=ctx["device"], factories=model_factories(smk.config))
