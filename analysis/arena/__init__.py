"""The arena: FORA, calibrated plans and the peer caches (TaylorSeer, First Block Cache) at equal cost.

`experiment.py` runs every method on the same seeds and scores it against the uncached images; `fid.py` adds the
distribution columns (`--fid`); `report.py` writes the CSV, JSON, plans and HTML report; `rescore.py` recomputes
the distribution columns of a finished run; `policies.py` is the small live arena behind the app's Policies tab;
`__main__.py` is the command line (`python -m analysis.arena`).
"""
