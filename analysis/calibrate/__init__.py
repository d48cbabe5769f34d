"""Calibration: a cache plan fitted to the model from its own step x step similarity (`fit.py`, policy `calibrated`).

`__main__.py` is the command line (`python -m analysis.calibrate`), which writes the plan as JSON for
`ForaConfig(plan=...)`.
"""

from analysis.calibrate.fit import (
    CALIBRATION_SEED,
    MAX_STEPS_ORDER1,
    best_steps,
    calibrate,
    calibration_set,
    record_grams,
    reuse_costs,
)

__all__ = [
    "CALIBRATION_SEED",
    "MAX_STEPS_ORDER1",
    "best_steps",
    "calibrate",
    "calibration_set",
    "record_grams",
    "reuse_costs",
]
