# Stage 3: mode connectivity. Fit a curve between two checkpoints, evaluate
# the curve and the straight line at N points (BN statistics recomputed at
# each t), and the loss plane through (w1, w2, bend) with projected iterates.


rule fit_curve:
    input:
        unpack(lambda wc: _curve_ends(wc.curve, wc.inst)),
        data=DATA_CACHE,
    output:
        curve=P.curve_file(R, "{curve}", "{inst}", "curve.pt"),
        metrics=P.curve_file(R, "{curve}", "{inst}", "metrics.csv"),
    params:
        settings=lambda wc: C.curve_settings(config, wc.curve),
        data=DATA,
        seed=lambda wc: curve_instances(wc.curve)[wc.inst][0].seed,
        workdir=lambda wc: P.curve_work(R, wc.curve, wc.inst),
    log:
        P.log(R, "curves", "{curve}", "{inst}-fit"),
    threads: stage_threads("curves")
    resources:
        **stage_resources("curves", runtime=720),
    conda:
        ENV
    script:
        "../../scripts/fit_curve.py"


rule evaluate_paths:
    input:
        unpack(_paths_inputs),
        data=DATA_CACHE,
    output:
        curve=P.path_table(R, "{curve}", "{inst}", "curve"),
        line=P.path_table(R, "{curve}", "{inst}", "line"),
    params:
        settings=lambda wc: C.curve_settings(config, wc.curve),
        data=DATA,
    log:
        P.log(R, "curves", "{curve}", "{inst}-paths"),
    threads: stage_threads("curves")
    resources:
        **stage_resources("curves"),
    conda:
        ENV
    script:
        "../../scripts/evaluate_paths.py"


rule plane:
    input:
        unpack(_plane_inputs),
        data=DATA_CACHE,
    output:
        grid=P.plane_file(R, "{plane}", "{inst}", "grid.csv"),
        points=P.plane_file(R, "{plane}", "{inst}", "points.csv"),
    params:
        settings=lambda wc: C.plane_settings(config, wc.plane),
        data=DATA,
    log:
        P.log(R, "planes", "{plane}", "{inst}"),
    threads: stage_threads("curves")
    resources:
        **stage_resources("curves", runtime=720),
    conda:
        ENV
    script:
        "../../scripts/plane.py"
