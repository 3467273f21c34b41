"""Workflow configuration: loading, validation, and resolution into jobs (a package by job).

A config (``config/*.yaml``) describes experiments as data: runs, the curve pairs, planes and
similarity comparisons that refer to runs by name, the figures and the claims' thresholds.

* :mod:`.load` reads it with ``yaml.safe_load`` (a ``!!python/object`` tag and duplicate keys refused);
* :mod:`.validate` checks it against ``workflow/schemas/config.schema.yaml`` and then for
  cross-references, raising :class:`~closerlook.io.ConfigError` with the key path in the message
  (:func:`check_models`: the model builds, run by the workflow's first job);
* :mod:`.settings` merges each block over its defaults (:mod:`closerlook.defaults`) by one table;
* :mod:`.resolve` turns runs into run specs for :mod:`closerlook.train` and endpoints into
  checkpoint paths; :mod:`.layouts` gives each figure its input paths.

No Snakemake import and no torch import (planning imports this package): the Snakefile, the CLI
and the tests all use it, and ``from closerlook.config import X`` names every function here.
"""
from ..io import ConfigError  # noqa: F401 (C.ConfigError)
from .load import (REPO_ROOT, SCHEMA_PATH, NAME_RE, load_yaml, retype_cli_values)
from .settings import (BLOCKS, NESTED, merged, curve_settings, plane_settings, activation_settings,
                       lens_settings, sharpness_settings, similarity_settings, align_settings,
                       autoneb_settings, ensemble_settings, claim_rules, control_settings)
from .resolve import (Endpoint, endpoint_tag, run_names, resolve_run, data_spec, data_source, probe_size,
                      checkpoint_tags, results_dir, ckpt_path, activation_dir, teacher_endpoint, run_spec,
                      model_factories, model_check_params, pair_instances, curve_instances, plane_projection,
                      lens_instances, lens_trajectory, sharpness_checkpoints, comparison_instances,
                      curve_aligns, curve_end, autoneb_curves, path_kinds, ensemble_base, ensemble_inst,
                      ensemble_curve, ensemble_members, ensemble_budgets, ensemble_training)
from .validate import (validate_schema, load_config, validate_config, check_models, control_endpoints, check_curve_stop,
                       sample_size_warnings)
from .layouts import (figure_names, claim_figures, figure_formats, figure_files, figure_layout,
                      figure_options, claims_inputs, claims_input_files, control_layout)
from .explain import (fidelity_settings, fidelity_pairs, explain_layout, check_explain_figures)  # added by explain
