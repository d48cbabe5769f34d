"""The interval sweep: FORA at several cache intervals against the uncached model, on the same seeds.

`experiment.py` runs it and returns a `SweepResult`; `report.py` writes its CSV, JSON and HTML report; `__main__.py`
is the command line (`python -m analysis.sweep`).
"""

from analysis.sweep.experiment import COLUMNS, SweepResult, SweepRow, run_sweep

__all__ = ["COLUMNS", "SweepResult", "SweepRow", "run_sweep"]
