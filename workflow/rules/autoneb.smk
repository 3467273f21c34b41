# AutoNEB (Draxler et al. 2018) between the endpoints of the curves listed under `autoneb:`
# (aligned ends where the curve aligns): pivots relaxed with the NEB force, pivots inserted where a
# segment peaks, then the chain evaluated like a curve (BN recomputed at each t) -> autoneb.csv.


rule autoneb:
    input:
        unpack(lambda wc: _curve_ends(wc.curve, wc.inst)),
        data=DATA_CACHE,
    output:
        pivots=P.autoneb_file(R, "{curve}", "{inst}", "autoneb.pt"),
        metrics=P.autoneb_file(R, "{curve}", "{inst}", "autoneb_metrics.csv"),
        table=P.path_table(R, "{curve}", "{inst}", "autoneb"),
    params:
        settings=lambda wc: C.autoneb_settings(config),
        eval_settings=lambda wc: C.curve_settings(config, wc.curve),
        data=DATA,
    log:
        P.log(R, "autoneb", "{curve}", "{inst}"),
    threads: stage_threads("autoneb")
    resources:
        **stage_resources("autoneb", runtime=720),
    conda:
        ENV
    script:
        "../../scripts/autoneb.py"
