"""Rule ensembles: accuracy, NLL and diversity of every ensemble of the comparison."""
from closerlook import stages, ensembles
from closerlook.jobs import job

smk = snakemake  # noqa: F821
with job(smk, stage=f"ensembles {smk.wildcards.inst}") as ctx:
    i, s = smk.input, smk.params.settings
    members = {"independent": list(i.independent), "snapshot": list(i.snapshot), "fge": list(i.fge), "swa": list(i.swa)}
    curve = {"curve": i.curve, "start": i.curve_start, "end": i.curve_end,
             "ts": ensembles.curve_ts(s["members"], s["curve_ts"])}
    stages.ensembles(members, curve, smk.params.budgets, s, smk.params.data, dict(smk.output.items()),
                     device=ctx["device"])
