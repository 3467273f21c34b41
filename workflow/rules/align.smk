# Permutation alignment (curves with `align: weights`): the end checkpoint permuted to match the
# start by weight matching, then the straight line to it (and, without BN, that line REPAIRed),
# reported beside the raw line. The curve, its plane and AutoNEB then join start and aligned end.


rule align_end:
    input:
        unpack(lambda wc: _curve_ends(wc.curve, wc.inst, raw=True)),
    output:
        P.aligned_end(R, "{curve}", "{inst}"),
    params:
        settings=C.align_settings(config),
    log:
        P.log(R, "curves", "{curve}", "{inst}-align"),
    resources:
        **stage_resources("curves", gpu=False, runtime=60),
    conda:
        ENV
    script:
        "../../scripts/align_end.py"


rule evaluate_aligned:
    input:
        unpack(lambda wc: _curve_ends(wc.curve, wc.inst)),
        data=DATA_CACHE,
    output:
        P.path_table(R, "{curve}", "{inst}", "{aligned}"),
    wildcard_constraints:
        aligned=r"(aligned|repaired)",
    params:
        settings=lambda wc: C.curve_settings(config, wc.curve),
        align=C.align_settings(config),
        data=DATA,
    log:
        P.log(R, "curves", "{curve}", "{inst}-{aligned}"),
    threads: stage_threads("curves")
    resources:
        **stage_resources("curves"),
    conda:
        ENV
    script:
        "../../scripts/evaluate_aligned.py"
