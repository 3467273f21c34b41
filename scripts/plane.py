"""Rule plane: loss surface on the plane (w1, w2, bend) with projected checkpoints."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook import curves  # noqa: E402
from closerlook.jobs import data_args, job, run_cli  # noqa: E402

smk = snakemake  # noqa: F821
s = smk.params.settings
out_dir = str(smk.output.grid).rsplit("/", 1)[0]
with job(smk, stage=f"plane {smk.wildcards.plane} {smk.wildcards.inst}") as ctx:
    argv = ["plane", "--w1", smk.input.start, "--w2", smk.input.end, "--bend", smk.input.curve,
            "--project", *smk.input.project, "--out-dir", out_dir,
            "--grid-points", *map(str, s["grid"]), "--margin", str(s["margin"]),
            "--device", ctx["device"], "--threads", str(ctx["threads"]), *data_args(smk.params.data)]
    if s.get("eval_train_images"):
        argv += ["--eval-train-images", str(s["eval_train_images"])]
    if s.get("bn_batches"):
        argv += ["--bn-batches", str(s["bn_batches"])]
    run_cli(curves.main, argv)
