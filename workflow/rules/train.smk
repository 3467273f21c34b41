# Stage 2: training. One rule per configured run (train_<run>), one job per
# seed. Checkpoints are written into a work directory (resume state survives
# a killed job) and published into place when the run ends.
#
# check_models first: planning builds no model (it imports no torch), so this cheap job builds every
# run's model on the meta device and fails, naming the run's key, before any training starts. Its
# output is an `ancient` input of each training job: it orders them after the check, but a re-check
# (a run's model block changed) does not make the other runs retrain.


rule check_models:
    output:
        P.models_check(R),
    params:
        models={r: C.model_check_params(config, r) for r in C.run_names(config)},
    log:
        P.log(R, "checks", "models"),
    threads: 1
    resources:
        mem_mb=res("data", "mem_mb", 4000),
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/check_models.py"


for _run in C.run_names(config):

    rule:
        name:
            f"train_{_run}"
        input:
            data=DATA_CACHE,
            models=ancient(P.models_check(R)),
            teacher=lambda wc, r=_run: _teacher_input(wc, r),
        output:
            _train_outputs(_run),
        params:
            spec=lambda wc, r=_run: C.run_spec(config, r, int(wc.seed)),
            workdir=lambda wc, r=_run: P.run_work(R, r, wc.seed),
        log:
            P.log(R, "train", _run, "seed{seed}"),
        threads: stage_threads("train")
        resources:
            **stage_resources("train", runtime=720),
        conda:
            ENV
        script:
            "../../scripts/train.py"
