"""Benchmarks (python -m bench.<name>)."""


def register(rows: list, targets: dict, own_rows: list, own_targets: dict, section):
    """Add a bench module's table rows and targets to bench/run.py's (once each); returns ``section``, the
    callable bench.run times as that module's section."""
    rows.extend(r for r in own_rows if r not in rows)
    targets.update(own_targets)
    return section
