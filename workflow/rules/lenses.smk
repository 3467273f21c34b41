# Stage 3b: the older lenses on the pair of the lens plane's curve (config `lenses:`).
# Filter-normalised 1-D/2-D slices around each endpoint, PCA and t-SNE of a run's
# trajectory (streamed Gram matrix) with each view's share of its variance, and the
# loss surface on the top-2 PCA plane. BN statistics recomputed at every point.


rule lens_slices:
    input:
        ckpt=lambda wc: ckpt(C.lens_instances(config)[wc.inst][wc.end]),
        data=DATA_CACHE,
    output:
        slice1d=P.lens_slice(R, "{plane}", "{inst}", "slice1d", "{end}"),
        slice2d=P.lens_slice(R, "{plane}", "{inst}", "slice2d", "{end}"),
    params:
        settings=LENS,
        data=DATA,
    wildcard_constraints:
        end="|".join(P.LENS_ENDS),
    log:
        P.log(R, "lenses", "{plane}", "{inst}-slices-{end}"),
    threads: stage_threads("lenses")
    resources:
        **stage_resources("lenses"),
    conda:
        ENV
    script:
        "../../scripts/lens_slices.py"


rule lens_trajectory:
    input:
        unpack(_lens_trajectory_inputs),
    output:
        [P.lens_file(R, "{plane}", "{inst}", name) for name in P.LENS_TRAJECTORY_FILES],
    params:
        settings=LENS,
    log:
        P.log(R, "lenses", "{plane}", "{inst}-trajectory"),
    threads: stage_threads("lenses")
    resources:
        **stage_resources("lenses"),
    conda:
        ENV
    script:
        "../../scripts/lens_trajectory.py"


rule lens_pca_grid:
    input:
        origin=lambda wc: ckpt(C.lens_trajectory(config, wc.inst)[-1]),
        components=P.lens_file(R, "{plane}", "{inst}", "components.pt"),
        trajectory=P.lens_file(R, "{plane}", "{inst}", "trajectory.csv"),
        data=DATA_CACHE,
    output:
        P.lens_file(R, "{plane}", "{inst}", "pca_grid.csv"),
    params:
        settings=LENS,
        data=DATA,
    log:
        P.log(R, "lenses", "{plane}", "{inst}-pca_grid"),
    threads: stage_threads("lenses")
    resources:
        **stage_resources("lenses"),
    conda:
        ENV
    script:
        "../../scripts/lens_pca_grid.py"
