"""Rule evaluate_aligned: the straight line to the aligned end (or that line REPAIRed), BN recomputed per t."""
from closerlook import stages
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"evaluate {smk.wildcards.aligned} {smk.wildcards.curve} {smk.wildcards.inst}") as ctx:
    stages.evaluate_aligned(smk.input.start, smk.input.end, {smk.wildcards.aligned: smk.output[0]}, smk.params.settings,
                            smk.params.align, smk.params.data, device=ctx["device"])
