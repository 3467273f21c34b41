# Stage 2: training. One rule per configured run (train_<run>), one job per
# seed. Checkpoints are written into a work directory (resume state survives
# a killed job) and published into place when the run ends.


for _run in C.run_names(config):

    rule:
        name:
            f"train_{_run}"
        input:
            data=DATA_CACHE,
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
