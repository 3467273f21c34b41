"""Rule similarity: per-layer similarity (+ chance baseline) between two activation stores."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook.jobs import job  # noqa: E402
from closerlook.similarity import compare_stores  # noqa: E402

smk = snakemake  # noqa: F821
with job(smk, stage=f"similarity {smk.wildcards.comparison} {smk.wildcards.inst}"):
    a, b = smk.params.labels
    compare_stores(smk.input.a, smk.input.b, smk.output[0], smk.params.settings, labels=(a, b))
