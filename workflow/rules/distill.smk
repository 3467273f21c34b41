# Distillation as fidelity (closerlook.fidelity; Stanton et al. 2021): the students of fig6_distill
# against their teacher, top-1 agreement and mean KL(teacher || student) at T = 1, on the test set
# and on the training images. One forward pass per network and split. Claim 7's premise reads it.


rule fidelity:
    input:
        ckpts=lambda wc: sorted({ckpt(p[k]) for p in C.fidelity_pairs(config) for k in ("teacher", "ckpt")}),
        data=DATA_CACHE,
    output:
        P.fidelity_table(R),
    params:
        pairs=lambda wc: [{**p, "teacher": ckpt(p["teacher"]), "ckpt": ckpt(p["ckpt"])} for p in C.fidelity_pairs(config)],
        settings=lambda wc: C.fidelity_settings(config),
        data=DATA,
    log:
        P.log(R, "distill", "fidelity"),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../../scripts/fidelity.py"
