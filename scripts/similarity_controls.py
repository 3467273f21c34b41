"""Rule similarity_controls: the similarity measures' positive controls (layer identification, change detection)."""
from closerlook import stages
from closerlook.config import model_factories
from closerlook.jobs import job

smk = snakemake  # noqa: F821
inp = smk.input
with job(smk, stage="similarity controls") as ctx:
    stages.similarity_controls(
        {k: smk.output[k] for k in ("controls", "controls_md", "identification", "change_detection")},
        smk.params.settings,
        stores={"a": inp.a, "b": inp.b} if "a" in inp.keys() else None,
        ckpt=inp.ckpt if "ckpt" in inp.keys() else None,
        act_settings=smk.params.act, data=smk.params.data, probe_size=smk.params.probe_size,
        device=ctx["device"], factories=model_factories(smk.config))
