"""Rule claims: evaluate the paper's claims on the measured tables."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook.claims import evaluate, write_reports  # noqa: E402
from closerlook.jobs import job  # noqa: E402

smk = snakemake  # noqa: F821
with job(smk, stage="claims"):
    result = evaluate(smk.params.layouts, smk.params.rules)
    write_reports(result, smk.output.json, smk.output.md)
