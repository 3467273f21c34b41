"""Rule extract_activations: every analysis layer of one checkpoint on the fixed probe set."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821
from closerlook.activations import capture_to_store, save_store  # noqa: E402
from closerlook.data import load_subsets, probe_set  # noqa: E402
from closerlook.io import load_checkpoint  # noqa: E402
from closerlook.jobs import job  # noqa: E402
from closerlook.models import analysis_layers, model_from_checkpoint  # noqa: E402

smk = snakemake  # noqa: F821
s = smk.params.settings
out = str(smk.output[0])
with job(smk, stage=f"activations {smk.input.ckpt}") as ctx:
    ck = load_checkpoint(smk.input.ckpt)
    meta = {"checkpoint": str(smk.input.ckpt), "status": ck["meta"].get("status", "ok")}
    if ck["model"] is None:  # the run diverged before this checkpoint
        save_store(out, {}, dict(meta, status="diverged"))
    else:
        model = model_from_checkpoint(ck, smk.input.ckpt).to(ctx["device"])
        xtr, _, _, _, info = load_subsets(smk.params.data)
        probe = probe_set(xtr, smk.params.probe_size)
        capture_to_store(model, analysis_layers(model), probe, out, meta=meta, batch_size=s["batch_size"],
                         mean=info["mean"], std=info["std"], mode=s["mode"], subsample=s["subsample"],
                         device=ctx["device"])
