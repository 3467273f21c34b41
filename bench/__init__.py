"""Benchmarks (python -m bench.<name>)."""


def register(rows: list, targets: dict, own_rows: list, own_targets: dict, section):
    """Add a bench module's table rows and targets to bench/run.py's (once each); returns ``section``, the
    callable bench.run times as that module's section."""
    rows.extend(r for r in own_rows if r not in rows)
    targets.update(own_targets)
    return section


def snakemake_env() -> dict:
    """The environment for a timed ``snakemake`` process. Snakemake loads the SLURM executor plugin at
    start-up, and where the SLURM client tools are installed the plugin runs ``scontrol show config``,
    which waits ~9 s for a controller when none is running (this machine class: the tools are here for
    the SLURM tests, the controller only while they run). That wait is not planning or training, so where
    ``scontrol ping`` says no controller answers, ``scontrol`` is shadowed by a stub that fails at once:
    the plugin gets the same failure it would get after its wait. With a controller up, nothing changes."""
    import atexit
    import os
    import shutil
    import subprocess
    import tempfile
    env = dict(os.environ)
    if shutil.which("scontrol") is None:
        return env
    if subprocess.run(["scontrol", "ping"], capture_output=True, timeout=30).returncode == 0:
        return env
    stub_dir = tempfile.mkdtemp(prefix="closerlook-noslurm-")
    atexit.register(shutil.rmtree, stub_dir, True)
    stub = os.path.join(stub_dir, "scontrol")
    with open(stub, "w") as f:
        f.write("#!/bin/sh\necho 'no SLURM controller (closerlook bench stub)' >&2\nexit 1\n")
    os.chmod(stub, 0o755)
    env["PATH"] = stub_dir + os.pathsep + env.get("PATH", "")
    return env
