"""Job start-up (issue 26.2): each job imports only its own stage's module (closerlook.stages loads
stages on first use), so the jobs that only read tables and stores (figures, claims, similarity
tables) start without torch."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_TORCH = "import sys; sys.modules.update(torch=None, torchvision=None); "  # `import torch` raises


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_reading_jobs_start_without_torch():
    # each stage plus the library modules its function imports when it runs
    r = _python(NO_TORCH + "from closerlook import stages; stages.figure, stages.claims, stages.similarity; "
                "import closerlook.figures, closerlook.claims, closerlook.similarity_tables, closerlook.activation_store")
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_training_job_still_fails_fast_without_torch():
    r = _python(NO_TORCH + "from closerlook import stages; stages.train")
    assert r.returncode != 0 and "torch" in r.stderr          # the check above can fail


@pytest.mark.parametrize("name", ["train", "similarity", "autoneb", "ensembles"])
def test_a_stage_named_like_its_module_stays_the_function(name):
    # importing the submodule directly first binds it onto the package; the stage must win
    r = _python(f"import closerlook.stages.{name}; from closerlook import stages; f = stages.{name}; "
                f"assert callable(f) and f.__module__ == 'closerlook.stages.{name}', f")
    assert r.returncode == 0, r.stderr[-2000:]


def test_every_stage_resolves_and_unknown_names_fail():
    from closerlook import stages
    assert all(callable(getattr(stages, n)) or n == "Log" for n in stages.__all__)
    assert set(stages.__all__) <= set(dir(stages))
    with pytest.raises(AttributeError, match="no attribute 'fit_curves'"):
        stages.fit_curves
