"""Rule evaluate_path: loss/accuracy along a fitted curve or the straight line (BN recomputed per t)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook import curves  # noqa: E402
from closerlook.jobs import data_args, job, run_cli  # noqa: E402

smk = snakemake  # noqa: F821
s = smk.params.settings
with job(smk, stage=f"evaluate {smk.wildcards.path} {smk.wildcards.curve} {smk.wildcards.inst}") as ctx:
    argv = ["evaluate", "--start", smk.input.start, "--end", smk.input.end, "--out", smk.output[0],
            "--points", str(s["points"]), "--device", ctx["device"], "--threads", str(ctx["threads"]),
            *data_args(smk.params.data)]
    if smk.wildcards.path == "curve":
        argv += ["--curve", smk.input.curve]
    if s.get("eval_train_images"):
        argv += ["--eval-train-images", str(s["eval_train_images"])]
    if s.get("bn_batches"):
        argv += ["--bn-batches", str(s["bn_batches"])]
    run_cli(curves.main, argv)
