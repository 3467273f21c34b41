# The ensemble comparison (`ensembles:`): FGE members and SWA weights trained from one checkpoint
# with the same extra budget, then every ensemble (independent seeds, SGDR snapshots, FGE, points
# along a fitted curve, SWA) evaluated: test accuracy, NLL, member disagreement and CKA.
# Included by the Snakefile only when the config has an `ensembles` block.


rule fge:
    input:
        base=lambda wc: ckpt(C.ensemble_base(config)),
        data=DATA_CACHE,
    output:
        [P.fge_member(R, "{inst}", k) for k in range(C.ensemble_settings(config)["members"])],
    params:
        training=lambda wc: C.ensemble_training(config),
        data=DATA,
    log:
        P.log(R, "ensembles", "{inst}-fge"),
    threads: stage_threads("ensembles")
    resources:
        **stage_resources("ensembles", runtime=720),
    conda:
        ENV
    script:
        "../../scripts/fge.py"


rule swa:
    input:
        base=lambda wc: ckpt(C.ensemble_base(config)),
        data=DATA_CACHE,
    output:
        P.swa_weights(R, "{inst}"),
    params:
        training=lambda wc: C.ensemble_training(config),
        data=DATA,
    log:
        P.log(R, "ensembles", "{inst}-swa"),
    threads: stage_threads("ensembles")
    resources:
        **stage_resources("ensembles", runtime=720),
    conda:
        ENV
    script:
        "../../scripts/swa.py"


rule ensembles:
    input:
        unpack(_ensemble_inputs),
        data=DATA_CACHE,
    output:
        ensembles=P.ensemble_table(R, "{inst}", "ensembles"),
        members=P.ensemble_table(R, "{inst}", "members"),
    params:
        budgets=lambda wc: C.ensemble_budgets(config),
        settings=lambda wc: C.ensemble_settings(config),
        data=DATA,
    log:
        P.log(R, "ensembles", "{inst}"),
    threads: stage_threads("ensembles")
    resources:
        **stage_resources("ensembles"),
    conda:
        ENV
    script:
        "../../scripts/ensembles.py"
