"""Rule fit_curve: train the bend(s) of a curve between two checkpoints; resumes after a kill."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook import curves  # noqa: E402
from closerlook.jobs import data_args, job, publish, run_cli  # noqa: E402

smk = snakemake  # noqa: F821
s = smk.params.settings
with job(smk, stage=f"fit curve {smk.wildcards.curve} {smk.wildcards.inst}") as ctx:
    run_cli(curves.main, [
        "fit", "--start", smk.input.start, "--end", smk.input.end, "--out", smk.params.workdir,
        "--kind", s["kind"], "--num-bends", str(s["num_bends"]), "--epochs", str(s["epochs"]),
        "--lr", str(s["lr"]), "--wd", str(s["weight_decay"]), "--batch-size", str(s["batch_size"]),
        "--t-per-batch", str(s["t_per_batch"]), "--augment" if s["augment"] else "--no-augment",
        "--seed", str(smk.params.seed), "--device", ctx["device"], "--threads", str(ctx["threads"]),
        *data_args(smk.params.data),
    ])
    publish(smk.params.workdir, smk.output)
